"""Empty on purpose: the handler (lambdatorch) is on EFS in /mnt/efs/python, on PYTHONPATH."""
