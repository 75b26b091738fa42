"""Guest networking: one network namespace per daemon, a bridge per host group, a tap per VM, an uplink out,
and the policy (nftables) saying what each VM may reach.

Everything lives inside the daemon's own namespace, so guests never collide with the host's
interfaces or routes, and the daemon removes it all by deleting the namespace.
"""

from pyslicer.net.network import GroupNetwork, Lease, NetworkNamespace, Uplink, check_networks
from pyslicer.net.policy import Policy, VMPolicy, parse_cidrs

__all__ = ["GroupNetwork", "Lease", "NetworkNamespace", "Policy", "Uplink", "VMPolicy", "check_networks", "parse_cidrs"]
