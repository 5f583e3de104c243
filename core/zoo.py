"""The built-in architectures, as tensor tables (the torch modules live in workers.zoo)."""

from core.architectures import Architecture, Tensor

LENET_300_100 = Architecture(
    name="lenet-300-100",
    description="LeNet-300-100: fc 300 → ReLU → fc 100 → ReLU → fc 10 on flattened 28×28 input",
    input_shape=(1, 28, 28),
    num_classes=10,
    tensors=(
        Tensor("fc1.weight", (300, 784), "linear"),
        Tensor("fc1.bias", (300,), "bias"),
        Tensor("fc2.weight", (100, 300), "linear"),
        Tensor("fc2.bias", (100,), "bias"),
        Tensor("fc3.weight", (10, 100), "linear"),
        Tensor("fc3.bias", (10,), "bias"),
    ),
    builder="workers.zoo:LeNet300100",
    config={"flatten_input": True},
)

# Caffe's LeNet as OLMP used it: no ReLU after the convolutions.
LENET_5 = Architecture(
    name="lenet-5",
    description=(
        "LeNet-5 (Caffe): conv 5×5 20 → maxpool 2 → conv 5×5 50 → maxpool 2 → fc 500 → ReLU → fc 10"
    ),
    input_shape=(1, 28, 28),
    num_classes=10,
    tensors=(
        Tensor("conv1.weight", (20, 1, 5, 5), "conv2d"),
        Tensor("conv1.bias", (20,), "bias"),
        Tensor("conv2.weight", (50, 20, 5, 5), "conv2d"),
        Tensor("conv2.bias", (50,), "bias"),
        Tensor("fc1.weight", (500, 800), "linear"),
        Tensor("fc1.bias", (500,), "bias"),
        Tensor("fc2.weight", (10, 500), "linear"),
        Tensor("fc2.bias", (10,), "bias"),
    ),
    builder="workers.zoo:LeNet5",
)

BUILTINS = (LENET_300_100, LENET_5)

# Recipes of `thresher zoo train`: ours, and Caffe's LeNet solver as the DNS and OLMP papers used.
TRAINING_RECIPES = ("onecycle", "caffe")
CAFFE_ITERATIONS = 10_000  # lenet_solver.prototxt's max_iter
