"""The daemon: host groups, the node lifecycle, the registry; no HTTP here."""

from pyslicer.daemon.daemon import Daemon, HostGroup, NodeRequest
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node

__all__ = ["Daemon", "HostGroup", "Node", "NodeRequest", "NodeState"]
