"""`rl-service sft`: supervised fine-tuning of an HF causal LM on a dataset task's prompt/response
rows, on the FSDP2 learner processes; the warm start users run before RL.

    batches.py   data order (seeded shuffle per epoch) and the [B, T] tensors + response-token mask
    learner.py   SFTLearner: one per process (placement.py makes them Ray actors): masked CE
                 steps, greedy completions for eval, save_hf
    loop.py      run_sft: the driver (steps, eval every model.sft.eval_every, stop at
                 model.sft.target_accuracy or max_steps, metrics, runs/<name>/final)
"""
