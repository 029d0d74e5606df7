"""Sans-IO SMTP: no sockets, no clock, no threads, no logging in this package."""
