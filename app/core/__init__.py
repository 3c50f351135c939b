"""What NXCLOUD's bodies mean, without Flask or a database: the statuses and their order
(status), parsing and validating the bodies (payloads), and NXCLOUD's MD5 signature
(signing). Every other package may import it; it imports none of them."""
