"""A randomized chaos soak: `make soak`, or `python -m tests.soak --seconds N --seed S
--broker redis|amqp` (SOAK_S and SOAK_SEED give the defaults).

On a stack of its own (private PostgreSQL and broker; gunicorn with two workers, two Celery
workers, beat), clients in three organizations send bulk jobs of entries they own, with
Idempotency-Keys and careful retries, while a chaos thread kills processes and takes the
servers down. At the end the database must equal the clients' model of what succeeded, and
every answer must have been one a client can live with. Modules by role: stack.py (servers,
database, processes), model.py (what the database should hold), clients.py, chaos.py,
report.py (the end checks and the printout), run.py (one run, the command line).
"""
