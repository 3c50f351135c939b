"""What NXCLOUD's bodies mean and what every area shares, without Flask or a database: the
statuses and their order (status), parsing and validating the bodies (payloads), NXCLOUD's
MD5 signature (signing), ISO times (times) and a periodic background thread (periodic).
Every other package may import it; it imports none of them."""
