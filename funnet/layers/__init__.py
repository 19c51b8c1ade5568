r"""Layers: each constructor returns a :class:`funnet.Layer` (see :mod:`funnet.contract`).

One module per concept: ``dense``, ``elementwise`` (activations, PReLU, softmax),
``reshape`` (Identity, Flatten, Reshape), ``dropout``, ``normalization`` (BatchNorm,
LayerNorm, GroupNorm), ``conv`` (Conv, ConvTranspose), ``pooling`` (MaxPool, AvgPool,
SumPool, GlobalAvgPool), ``combinators`` (serial, parallel, fanout, fan-ins),
``inspection`` (param_count, summary), ``embedding``, ``recurrent`` (RNN, LSTM, GRU),
``sequence`` (the sequence input convention, LastStep, Bidirectional), ``attention``
(dot_product_attention, MultiHeadAttention), ``graph_conv`` (GraphConv, GraphAttention),
``message_passing`` (MessagePassing) and ``graph_nodes`` (nodewise, Nodes, Readout) on a
:class:`funnet.graph.Graph`. A new
layer family joins as one module here, one re-export line below and in
``funnet/__init__.py``, and one entry in the test registry (``tests/_registry.py``).

::

    init, apply = funnet.Dense(4)
    out_shape, params = init(key, (-1, 2))        # params = {"W": [2, 4], "b": [4]}
    y = apply(params, x)                          # x: [batch, 2] -> y: [batch, 4]

Shapes use ``-1`` (or any int) for the batch axis.
"""

from .attention import MultiHeadAttention as MultiHeadAttention
from .attention import attention_weights as attention_weights
from .attention import dot_product_attention as dot_product_attention
from .attention import dot_product_attention_backward as dot_product_attention_backward
from .combinators import FanInConcat as FanInConcat
from .combinators import FanInSum as FanInSum
from .combinators import fanout as fanout
from .combinators import parallel as parallel
from .combinators import serial as serial
from .conv import Conv as Conv
from .conv import ConvTranspose as ConvTranspose
from .dense import Dense as Dense
from .dropout import Dropout as Dropout
from .elementwise import ActivationLayer as ActivationLayer
from .elementwise import Elu as Elu
from .elementwise import Exp as Exp
from .elementwise import Gelu as Gelu
from .elementwise import HardLogistic as HardLogistic
from .elementwise import HardTanh as HardTanh
from .elementwise import LeakyRelu as LeakyRelu
from .elementwise import Logistic as Logistic
from .elementwise import LogSoftmax as LogSoftmax
from .elementwise import PRelu as PRelu
from .elementwise import Relu as Relu
from .elementwise import Selu as Selu
from .elementwise import Sigmoid as Sigmoid
from .elementwise import Silu as Silu
from .elementwise import Softmax as Softmax
from .elementwise import Softplus as Softplus
from .elementwise import Step as Step
from .elementwise import Swish as Swish
from .elementwise import Tanh as Tanh
from .embedding import Embedding as Embedding
from .graph_conv import GraphAttention as GraphAttention
from .graph_conv import GraphConv as GraphConv
from .graph_nodes import Nodes as Nodes
from .graph_nodes import Readout as Readout
from .graph_nodes import nodewise as nodewise
from .inspection import param_count as param_count
from .inspection import summary as summary
from .message_passing import MessagePassing as MessagePassing
from .normalization import BatchNorm as BatchNorm
from .normalization import GroupNorm as GroupNorm
from .normalization import LayerNorm as LayerNorm
from .pooling import AvgPool as AvgPool
from .pooling import GlobalAvgPool as GlobalAvgPool
from .pooling import MaxPool as MaxPool
from .pooling import SumPool as SumPool
from .recurrent import GRU as GRU
from .recurrent import LSTM as LSTM
from .recurrent import RNN as RNN
from .reshape import Flatten as Flatten
from .reshape import Identity as Identity
from .reshape import Reshape as Reshape
from .sequence import Bidirectional as Bidirectional
from .sequence import LastStep as LastStep
from .sequence import RecurrentOutput as RecurrentOutput
from .sequence import reverse_time as reverse_time

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "ActivationLayer",
    "AvgPool",
    "BatchNorm",
    "Bidirectional",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Dropout",
    "Elu",
    "Embedding",
    "Exp",
    "FanInConcat",
    "FanInSum",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "GraphAttention",
    "GraphConv",
    "GroupNorm",
    "HardLogistic",
    "HardTanh",
    "Identity",
    "LastStep",
    "LayerNorm",
    "LeakyRelu",
    "LogSoftmax",
    "Logistic",
    "MaxPool",
    "MessagePassing",
    "MultiHeadAttention",
    "Nodes",
    "PRelu",
    "Readout",
    "RecurrentOutput",
    "Relu",
    "Reshape",
    "Selu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Step",
    "SumPool",
    "Swish",
    "Tanh",
    "attention_weights",
    "dot_product_attention",
    "dot_product_attention_backward",
    "fanout",
    "nodewise",
    "parallel",
    "param_count",
    "reverse_time",
    "serial",
    "summary",
]
