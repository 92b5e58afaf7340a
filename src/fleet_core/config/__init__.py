"""Configuration: every option declared once, and the one place flags and environment are read.

Modules:
    options     every flag, variable and default of every command (pure declarations)
    settings    the frozen settings objects the rest of the code receives
    resolve     flags + environment -> one settings object; the only reader of os.environ
    parsers     the value parsers: NATS URLs, listen addresses, public keys
"""
