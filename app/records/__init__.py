"""The message record: what arrives is kept, applied and counted here."""
