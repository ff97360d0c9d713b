"""OpenAI-compatible policy endpoint: the plain PolicyServer (endpoint.py), its HTTP routes
(routes.py), request checks (checks.py), admission and the engine slot (admission.py), schemas and
the error envelope (protocol.py), streaming (stream.py), following training by hot swap
(follow.py), human feedback store (feedback.py). Serve is applied in rl_service/infra/placement.py."""
