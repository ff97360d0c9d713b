"""The online RLHF service (`rl-service online`): serve -> feedback -> reward model -> PPO -> hot swap.

service.py    the loop (dataflow at its top), publish / roll back, operator requests
rounds.py     one round's files and child commands (train-rm, train)
checks.py     guards and the held-out / live canary checks
publish.py    a version directory -> state dict + PolicyVersion for the version board
state.py      state.json: served version, versions, reward model, feedback position
tracking.py   metrics.jsonl rows, Ray gauges, W&B
"""
