"""Setting a fleet up: keys and the NATS server's permissions.

Modules:
    nats_config  an inventory, and the tiered NATS config and TOML it renders (pure)
    commands     ``fleet-deploy keygen`` and ``nats-config``
"""
