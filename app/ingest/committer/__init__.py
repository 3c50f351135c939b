"""One ingest committer for a whole server: the process that applies every worker's bodies.

Under the production command (gunicorn.conf.py) the workers do not apply bodies themselves.
Each request thread hands its body over a Unix socket to the committer, a process of its
own started by the gunicorn master, and waits for the answer. The committer reads every body
that has arrived from any worker, applies them in one transaction (`transaction.apply_batch`,
through the same writer as in a single process, so spooling while the database is away works
the same), answers each, and reads again. So one transaction takes the bodies of all the
workers (larger batches), the transactions never wait on one another (one writer: no
file-lock turns on SQLite, no queue on the counters' rows on PostgreSQL), and the work of
applying never competes with the request threads for a worker's interpreter lock.

A worker that cannot reach the committer (not started yet, ended) applies the body itself
with its own writer thread, as without a committer: nothing waits on the committer being up.

    protocol    the frames both ways, and the buffer of frames a peer has not read yet
    client      the worker's side: hand a body over and wait for its answer
    server      the committer process: read every worker's bodies, apply, answer
    supervisor  the gunicorn master's side: start it before the workers, start it again
"""
