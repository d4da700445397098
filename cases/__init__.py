"""Recall cases: the pure domain core (lifecycle, one case per signal, risk matrix, tasks).

Why a separate, pure package: what a case may do next, which alert belongs to which case and what a
risk score recommends are decisions an auditor must be able to replay and a test must be able to
pin down. So nothing here imports Faust, FastAPI, a database or Slack, and nothing reads the clock:
every time is an argument (epoch seconds). Storage, the API and Slack call into this core.
"""
