"""ILQL (`rl-service train-ilql`): offline value-based RL for language models from logged rewards.

heads.py   Q and V heads, the ShiftedLMHead that decodes with logits + beta * (Q - V), export files
data.py    logged rows (behaviour policy, JSONL, feedback store) -> token-level episodes
train.py   the loop on the heads (losses: rl_service/algo/ilql.py) and the held-out comparison
"""
