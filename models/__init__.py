"""The networks of Friesen & Domingos (ICLR 2018) as Keras functional builders.

Not part of the installed `keras_ftprop` package: import it from the root of
a checkout. `get_model` builds any of them by name; the builders take a
zero-argument `activation` factory so that every hidden activation is a fresh
layer:

```python
from models import get_model, resnet18
from keras_ftprop import HardThreshold

net = resnet18(activation=lambda: HardThreshold(target_loss="soft_hinge"))
net = get_model("convnet8", activation="staircase", target_loss="sste")
```

Arguments of every builder (`convnet4`, `convnet8`, `alexnet`, `resnet18`,
`resnet34`, `bireal_resnet18`, `micro_convnet`), in the style of `keras.applications`; each builder's docstring
adds what is particular to its network:

- `include_top`: add the classifier (and the dense layers before it). If
  False the output is the last feature map, reduced by `pooling`.
- `input_shape`: `(height, width, channels)`; None means the paper's input.
- `classes`: number of classes of the classifier.
- `classifier_activation`: activation of the classifier; None gives logits
  (the reference trains on logits with cross-entropy).
- `activation`: zero-argument factory returning a fresh Keras layer for each
  hidden activation (e.g. `lambda: HardThreshold()`); None is ReLU.
- `weight_decay`: coupled L2 weight decay `wd` (PyTorch semantics, see
  [models.regularization][]); 0 adds no regulariser.
- `batch_norm_weight_decay`: coupled L2 decay of batch norm's gamma and beta
  alone; None means `weight_decay` (the paper). 0 exempts them, which keeps
  step units behind batch norm from collapsing.
- `pooling`: only with `include_top=False`: "avg", "max" or None, as in
  keras.applications.
- `input_tensor`: optional `keras.Input` to build the model on.
- `name`: model name.
- `fuse_batch_norm`: a step or staircase right after a batch norm is one
  `keras_ftprop.BatchNormThreshold` named as the batch norm, whose threshold
  keeps the activation's name; False builds the two layers.
"""

from models.activations import ACTIVATION_NAMES, activation_factory
from models.alexnet import alexnet
from models.bireal import bireal_resnet18
from models.convnets import convnet4, convnet8
from models.layers import PaddedMaxPooling2D
from models.micro import micro_convnet
from models.registry import MODEL_NAMES, MODELS, ModelSpec, get_model, get_spec
from models.regularization import l2_weight_decay, weight_decay_penalty
from models.resnet import STEMS, resnet18, resnet34

__all__ = [
    "ACTIVATION_NAMES",
    "MODELS",
    "MODEL_NAMES",
    "STEMS",
    "ModelSpec",
    "PaddedMaxPooling2D",
    "activation_factory",
    "alexnet",
    "bireal_resnet18",
    "convnet4",
    "convnet8",
    "get_model",
    "get_spec",
    "l2_weight_decay",
    "micro_convnet",
    "resnet18",
    "resnet34",
    "weight_decay_penalty",
]
