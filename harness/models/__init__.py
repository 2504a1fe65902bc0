from harness.models.lenet import LENET_SPECS, LeNet, LeNetSpec, lenet_for_size
from harness.models.training import TrainConfig, train_classifier

__all__ = ["LENET_SPECS", "LeNet", "LeNetSpec", "TrainConfig", "lenet_for_size", "train_classifier"]
