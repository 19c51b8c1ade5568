"""funnet: functional neural networks on JAX with hand-derived, cross-checked gradients."""

from . import activations as activations
from . import backprop as backprop
from . import check as check
from . import checkpoint as checkpoint
from . import contract as contract
from . import data as data
from . import graph as graph
from . import hopfield as hopfield
from . import layers as layers
from . import losses as losses
from . import signature as signature
from . import train as train
from . import weights as weights
from .activations import Activation as Activation
from .activations import define_activation as define_activation
from .activations import elu as elu
from .activations import exp as exp
from .activations import gelu as gelu
from .activations import hard_logistic as hard_logistic
from .activations import hard_tanh as hard_tanh
from .activations import leaky_relu as leaky_relu
from .activations import logistic as logistic
from .activations import prelu as prelu
from .activations import relu as relu
from .activations import selu as selu
from .activations import sigmoid as sigmoid
from .activations import silu as silu
from .activations import softplus as softplus
from .activations import step as step
from .activations import swish as swish
from .activations import tanh as tanh
from .check import GradientCheckError as GradientCheckError
from .check import check_layer as check_layer
from .check import check_model as check_model
from .contract import Layer as Layer
from .contract import LayerError as LayerError
from .contract import NoBackwardRuleError as NoBackwardRuleError
from .contract import ParamsError as ParamsError
from .contract import StatefulModelError as StatefulModelError
from .contract import forward_twin as forward_twin
from .contract import layer as layer
from .data import Dataset as Dataset
from .data import load_digits as load_digits
from .data import load_mnist as load_mnist
from .layers import GRU as GRU
from .layers import LSTM as LSTM
from .layers import RNN as RNN
from .layers import ActivationLayer as ActivationLayer
from .layers import AvgPool as AvgPool
from .layers import BatchNorm as BatchNorm
from .layers import Bidirectional as Bidirectional
from .layers import Conv as Conv
from .layers import ConvTranspose as ConvTranspose
from .layers import Dense as Dense
from .layers import Dropout as Dropout
from .layers import Elu as Elu
from .layers import Embedding as Embedding
from .layers import Exp as Exp
from .layers import FanInConcat as FanInConcat
from .layers import FanInSum as FanInSum
from .layers import Flatten as Flatten
from .layers import Gelu as Gelu
from .layers import GlobalAvgPool as GlobalAvgPool
from .layers import GraphAttention as GraphAttention
from .layers import GraphConv as GraphConv
from .layers import GroupNorm as GroupNorm
from .layers import HardLogistic as HardLogistic
from .layers import HardTanh as HardTanh
from .layers import Identity as Identity
from .layers import LastStep as LastStep
from .layers import LayerNorm as LayerNorm
from .layers import LeakyRelu as LeakyRelu
from .layers import Logistic as Logistic
from .layers import LogSoftmax as LogSoftmax
from .layers import MaxPool as MaxPool
from .layers import MessagePassing as MessagePassing
from .layers import MultiHeadAttention as MultiHeadAttention
from .layers import Nodes as Nodes
from .layers import PRelu as PRelu
from .layers import Readout as Readout
from .layers import RecurrentOutput as RecurrentOutput
from .layers import Relu as Relu
from .layers import Reshape as Reshape
from .layers import Selu as Selu
from .layers import Sigmoid as Sigmoid
from .layers import Silu as Silu
from .layers import Softmax as Softmax
from .layers import Softplus as Softplus
from .layers import Step as Step
from .layers import SumPool as SumPool
from .layers import Swish as Swish
from .layers import Tanh as Tanh
from .layers import attention_weights as attention_weights
from .layers import dot_product_attention as dot_product_attention
from .layers import dot_product_attention_backward as dot_product_attention_backward
from .layers import fanout as fanout
from .layers import nodewise as nodewise
from .layers import parallel as parallel
from .layers import param_count as param_count
from .layers import reverse_time as reverse_time
from .layers import serial as serial
from .layers import summary as summary
from .losses import Loss as Loss
from .losses import accuracy as accuracy
from .losses import binary_cross_entropy as binary_cross_entropy
from .losses import l2_penalty as l2_penalty
from .losses import max_margin as max_margin
from .losses import mse as mse
from .losses import softmax_cross_entropy as softmax_cross_entropy
from .signature import model_signature as model_signature
from .train import EarlyStopping as EarlyStopping
from .train import NonFiniteLossError as NonFiniteLossError
from .train import TrainState as TrainState
from .train import evaluate as evaluate
from .train import fit as fit
from .train import make_step as make_step
from .train import predict as predict
from .weights import load_params as load_params
from .weights import save_params as save_params

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Activation",
    "ActivationLayer",
    "AvgPool",
    "BatchNorm",
    "Bidirectional",
    "Conv",
    "ConvTranspose",
    "Dataset",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "Elu",
    "Embedding",
    "Exp",
    "FanInConcat",
    "FanInSum",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "GradientCheckError",
    "GraphAttention",
    "GraphConv",
    "GroupNorm",
    "HardLogistic",
    "HardTanh",
    "Identity",
    "LastStep",
    "Layer",
    "LayerError",
    "LayerNorm",
    "LeakyRelu",
    "LogSoftmax",
    "Logistic",
    "Loss",
    "MaxPool",
    "MessagePassing",
    "MultiHeadAttention",
    "NoBackwardRuleError",
    "Nodes",
    "NonFiniteLossError",
    "PRelu",
    "ParamsError",
    "Readout",
    "RecurrentOutput",
    "Relu",
    "Reshape",
    "Selu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "StatefulModelError",
    "Step",
    "SumPool",
    "Swish",
    "Tanh",
    "TrainState",
    "accuracy",
    "activations",
    "attention_weights",
    "backprop",
    "binary_cross_entropy",
    "check",
    "check_layer",
    "check_model",
    "checkpoint",
    "contract",
    "data",
    "define_activation",
    "dot_product_attention",
    "dot_product_attention_backward",
    "elu",
    "evaluate",
    "exp",
    "fanout",
    "fit",
    "forward_twin",
    "gelu",
    "graph",
    "hard_logistic",
    "hard_tanh",
    "hopfield",
    "l2_penalty",
    "layer",
    "layers",
    "leaky_relu",
    "load_digits",
    "load_mnist",
    "load_params",
    "logistic",
    "losses",
    "make_step",
    "max_margin",
    "model_signature",
    "mse",
    "nodewise",
    "parallel",
    "param_count",
    "predict",
    "prelu",
    "relu",
    "reverse_time",
    "save_params",
    "selu",
    "serial",
    "sigmoid",
    "signature",
    "silu",
    "softmax_cross_entropy",
    "softplus",
    "step",
    "summary",
    "swish",
    "tanh",
    "train",
    "weights",
]
