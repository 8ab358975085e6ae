"""Webhooks: organizations' endpoints, the outbox written with a job's end, signed deliveries."""
