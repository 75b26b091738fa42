"""Guest networking: one network namespace per daemon, a bridge per host group, a tap per VM.

Everything lives inside the daemon's own namespace, so guests never collide with the host's
interfaces or routes, and the daemon removes it all by deleting the namespace.
"""

from pyslicer.net.network import GroupNetwork, Lease, NetworkNamespace

__all__ = ["GroupNetwork", "Lease", "NetworkNamespace"]
