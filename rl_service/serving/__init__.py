"""OpenAI-compatible Ray Serve endpoint for the policy: routes and limits (app.py, protocol.py),
following training by hot swap (follow.py), human feedback store (feedback.py), CLI (cli.py)."""
