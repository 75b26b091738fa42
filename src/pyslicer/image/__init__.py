"""The guest image: kernel, initramfs and root filesystem for pyslicer micro-VMs."""

from pyslicer.image.builder import GuestImage, ensure_image, image_dir

__all__ = ["GuestImage", "ensure_image", "image_dir"]
