"""The in-guest agent. Runs inside the VM on the guest's python3; imports only the stdlib, and only the cheap
parts of it (``wire`` mirrors ``pyslicer.protocol`` without its imports)."""
