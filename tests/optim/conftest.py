"""One thread for torch: the test machine has 2 cores shared by several people."""

import torch

torch.set_num_threads(1)
