"""The in-guest agent. Runs inside the VM on the guest's python3; imports only the stdlib, and only the cheap
parts of it, and ``pyslicer.protocol``, which is written to be cheap to import too."""
