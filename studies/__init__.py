"""The study recipes: one short script per study of the paper (`ttt-harness list` names them)."""
