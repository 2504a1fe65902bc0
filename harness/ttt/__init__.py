from harness.ttt.baselines import majority_vote
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt, head_ttt_one_point

__all__ = ["HeadTTTConfig", "batched_head_ttt", "head_ttt_one_point", "majority_vote"]
