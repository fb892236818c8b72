//! The architecture spec (`modelpress.spec`, version 1): a JSON description of a network as an
//! input description plus a sequence of layers (blocks nest their own sequences).
//!
//! Called by the API layer when a model is uploaded ([`ModelSpec::from_json`] then
//! [`ModelSpec::check_weights`]), by [`crate::nn::model`] and [`crate::nn::train`] to build
//! networks, and by the compression modules, which rewrite specs (all types are `Clone` with
//! `pub` fields) and re-validate them with [`ModelSpec::validate`]. Pure functions, any thread.
//!
//! Validation happens before anything is allocated: sizes are checked with overflow-checked
//! arithmetic against the limits below, so an absurd spec is rejected instead of exhausting
//! memory. The full format is documented in `docs/spec.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Value of the `format` field.
pub const FORMAT: &str = "modelpress.spec";
/// The only supported `version`.
pub const VERSION: u32 = 1;
/// Maximum nesting of blocks (top-level layers are at depth 1).
pub const MAX_DEPTH: usize = 16;
/// Maximum number of layers, counting the layers inside blocks and the blocks themselves.
pub const MAX_LAYERS: usize = 1000;
/// Maximum number of elements of one activation, per sample.
pub const MAX_ACTIVATION_ELEMENTS: u64 = 1 << 31;
/// Maximum number of elements of one parameter tensor.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 32;
/// Maximum number of parameter elements in the whole network (weights and buffers).
pub const MAX_TOTAL_PARAMETERS: u64 = 4_000_000_000;
/// Maximum rank of the per-sample input shape.
pub const MAX_INPUT_RANK: usize = 4;

/// A network architecture. Build one with [`ModelSpec::from_json`] (validates) or by hand and then
/// call [`ModelSpec::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Always `"modelpress.spec"`.
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// What one sample looks like and how it is preprocessed.
    pub input: InputSpec,
    /// What the network outputs.
    pub output: OutputSpec,
    /// The layers, applied in order.
    pub layers: Vec<Layer>,
}

/// The per-sample input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Per-sample shape without the batch dimension: `[64]` or `[C, H, W]`.
    pub shape: Vec<usize>,
    /// dtype of the raw input; integer inputs are converted to f32 before preprocessing.
    #[serde(default)]
    pub dtype: InputDType,
    /// Optional preprocessing: `x * scale`, then `(x - mean[c]) / std[c]` per channel (dim 0 of
    /// the per-sample shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Preprocess>,
}

/// Raw input dtypes accepted by a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputDType {
    /// 32-bit float (the default).
    #[default]
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// 64-bit float.
    F64,
    /// Unsigned bytes (e.g. image pixels 0..255).
    U8,
    /// Unsigned 32-bit integers.
    U32,
    /// Signed 16-bit integers.
    I16,
    /// Signed 32-bit integers.
    I32,
    /// Signed 64-bit integers.
    I64,
}

impl InputDType {
    /// The candle dtype raw inputs have.
    pub fn to_dtype(self) -> candle_core::DType {
        use candle_core::DType;
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::F64 => DType::F64,
            Self::U8 => DType::U8,
            Self::U32 => DType::U32,
            Self::I16 => DType::I16,
            Self::I32 => DType::I32,
            Self::I64 => DType::I64,
        }
    }
}

/// Input preprocessing, applied in f32: `((x * scale) - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Multiplier applied first (e.g. 1/255 for bytes). Default 1.
    #[serde(default = "one_f64")]
    pub scale: f64,
    /// Per-channel mean (one value for all channels, or one per channel). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<f64>,
    /// Per-channel standard deviation (one value, or one per channel). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub std: Vec<f64>,
}

/// What the last layer produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// `logits` (the default) or `probabilities` (the network ends in a softmax).
    #[serde(default)]
    pub kind: OutputKind,
    /// Number of classes; the network output per sample must be `[classes]`.
    pub classes: usize,
    /// Optional class names, one per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// Kind of network output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Unnormalised scores (cross-entropy applies a log-softmax).
    #[default]
    Logits,
    /// Probabilities summing to one (the spec ends in `softmax`).
    Probabilities,
}

/// One layer. Blocks (`residual`, `sequential`) hold their own layer sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    /// Fully connected layer on the last dimension: `y = x W^T + b`.
    Linear(LinearSpec),
    /// 2D convolution over `[C, H, W]`.
    Conv2d(Conv2dSpec),
    /// Batch normalisation over dim 0 of the per-sample shape (`[C]`, `[C, L]` or `[C, H, W]`).
    BatchNorm(BatchNormSpec),
    /// Layer normalisation over the trailing `normalized_shape` dims.
    LayerNorm(LayerNormSpec),
    /// `max(x, 0)`.
    Relu(Plain),
    /// `min(max(x, 0), 6)`.
    Relu6(Plain),
    /// Gaussian error linear unit.
    Gelu(GeluSpec),
    /// Logistic sigmoid.
    Sigmoid(Plain),
    /// Hyperbolic tangent.
    Tanh(Plain),
    /// Softmax over one per-sample dimension.
    Softmax(SoftmaxSpec),
    /// 2D max pooling over `[C, H, W]`.
    MaxPool2d(PoolSpec),
    /// 2D average pooling over `[C, H, W]` (zero padding counts in the average, like PyTorch).
    AvgPool2d(PoolSpec),
    /// Mean over every dim but the first: `[C, H, W]` → `[C]`.
    GlobalAvgPool(Plain),
    /// Flattens the per-sample shape to one dimension.
    Flatten(Plain),
    /// Dropout (identity at inference).
    Dropout(DropoutSpec),
    /// Reshapes the per-sample shape.
    Reshape(ReshapeSpec),
    /// `body(x) + shortcut(x)`, shortcut defaulting to the identity.
    Residual(ResidualSpec),
    /// A nested sequence.
    Sequential(SequentialSpec),
}

/// Fields of layers that have nothing but an optional name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plain {
    /// Optional name (only used for messages and index naming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `linear` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    /// Parameter prefix (see the naming rule in `docs/spec.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size of the incoming last dimension.
    pub in_features: usize,
    /// Size of the outgoing last dimension.
    pub out_features: usize,
    /// Whether there is a `<prefix>.bias`. Default true.
    #[serde(default = "yes")]
    pub bias: bool,
}

/// `conv2d` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dSpec {
    /// Parameter prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Incoming channels.
    pub in_channels: usize,
    /// Outgoing channels.
    pub out_channels: usize,
    /// Kernel size: `3` or `[3, 5]` (height, width).
    pub kernel_size: Pair,
    /// Stride (same for height and width). Default 1.
    #[serde(default = "one_usize")]
    pub stride: usize,
    /// Zero padding: `1` or `[1, 2]` (height, width). Default 0.
    #[serde(default)]
    pub padding: Pair,
    /// Dilation (same for height and width). Default 1.
    #[serde(default = "one_usize")]
    pub dilation: usize,
    /// Groups; `groups == in_channels` makes a depthwise convolution. Default 1.
    #[serde(default = "one_usize")]
    pub groups: usize,
    /// Whether there is a `<prefix>.bias`. Default true.
    #[serde(default = "yes")]
    pub bias: bool,
}

/// `batch_norm` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormSpec {
    /// Parameter prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Channels (dim 0 of the incoming per-sample shape).
    pub num_features: usize,
    /// Added to the variance. Default 1e-5.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Running-stats update factor in training, like PyTorch. Default 0.1.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Whether there are `weight`/`bias` tensors. Default true.
    #[serde(default = "yes")]
    pub affine: bool,
}

/// `layer_norm` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerNormSpec {
    /// Parameter prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The trailing per-sample dims normalised over: `[256]` (a bare number is accepted).
    #[serde(deserialize_with = "de_dims")]
    pub normalized_shape: Vec<usize>,
    /// Added to the variance. Default 1e-5.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Whether there are `weight`/`bias` tensors. Default true.
    #[serde(default = "yes")]
    pub elementwise_affine: bool,
}

/// `gelu` fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeluSpec {
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `none` (exact, erf-based; default) or `tanh`, like PyTorch.
    #[serde(default)]
    pub approximate: GeluApproximate,
}

/// GELU variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeluApproximate {
    /// `x * Φ(x)` with the exact error function.
    #[default]
    None,
    /// The tanh approximation.
    Tanh,
}

/// `softmax` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftmaxSpec {
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Per-sample dimension (no batch dim; negative counts from the end). Default -1.
    #[serde(default = "minus_one")]
    pub dim: i64,
}

/// `max_pool2d` / `avg_pool2d` fields. `ceil_mode` is not supported (floor, like PyTorch's
/// default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Window: `2` or `[2, 3]`.
    pub kernel_size: Pair,
    /// Stride; default: the kernel size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Pair>,
    /// Implicit padding (−∞ for max, 0 for average); at most half the kernel. Default 0.
    #[serde(default)]
    pub padding: Pair,
}

impl PoolSpec {
    /// The effective stride.
    pub fn stride(&self) -> Pair {
        self.stride.unwrap_or(self.kernel_size)
    }
}

/// `dropout` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutSpec {
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Drop probability in `[0, 1)`. Default 0.5.
    #[serde(default = "half")]
    pub p: f64,
}

/// `reshape` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshapeSpec {
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New per-sample shape; one entry may be -1 (inferred).
    pub shape: Vec<i64>,
}

/// `residual` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidualSpec {
    /// Prefix of the block (children are named below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The residual branch.
    pub body: Vec<Layer>,
    /// Projection shortcut; absent means identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<Vec<Layer>>,
}

/// `sequential` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialSpec {
    /// Prefix of the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The nested layers.
    pub layers: Vec<Layer>,
}

/// A size given for height and width: a number (both) or `[h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pair(pub usize, pub usize);

impl Pair {
    /// Same value for height and width.
    pub fn square(v: usize) -> Self {
        Self(v, v)
    }
}

impl Serialize for Pair {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == self.1 {
            s.serialize_u64(self.0 as u64)
        } else {
            [self.0, self.1].serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(usize),
            Two([usize; 2]),
        }
        match Raw::deserialize(d) {
            Ok(Raw::One(v)) => Ok(Pair(v, v)),
            Ok(Raw::Two([h, w])) => Ok(Pair(h, w)),
            Err(_) => {
                Err(serde::de::Error::custom("expected a non-negative integer or a pair [height, width] of them"))
            }
        }
    }
}

fn de_dims<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(usize),
        Many(Vec<usize>),
    }
    match Raw::deserialize(d) {
        Ok(Raw::One(v)) => Ok(vec![v]),
        Ok(Raw::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom("expected a non-negative integer or a list of them")),
    }
}

fn yes() -> bool {
    true
}
fn one_f64() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_momentum() -> f64 {
    0.1
}
fn half() -> f64 {
    0.5
}
fn minus_one() -> i64 {
    -1
}

impl Layer {
    /// The `type` string of this layer.
    pub fn type_name(&self) -> &'static str {
        match self {
            Layer::Linear(_) => "linear",
            Layer::Conv2d(_) => "conv2d",
            Layer::BatchNorm(_) => "batch_norm",
            Layer::LayerNorm(_) => "layer_norm",
            Layer::Relu(_) => "relu",
            Layer::Relu6(_) => "relu6",
            Layer::Gelu(_) => "gelu",
            Layer::Sigmoid(_) => "sigmoid",
            Layer::Tanh(_) => "tanh",
            Layer::Softmax(_) => "softmax",
            Layer::MaxPool2d(_) => "max_pool2d",
            Layer::AvgPool2d(_) => "avg_pool2d",
            Layer::GlobalAvgPool(_) => "global_avg_pool",
            Layer::Flatten(_) => "flatten",
            Layer::Dropout(_) => "dropout",
            Layer::Reshape(_) => "reshape",
            Layer::Residual(_) => "residual",
            Layer::Sequential(_) => "sequential",
        }
    }

    /// The explicit `name`, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Layer::Linear(l) => l.name.as_deref(),
            Layer::Conv2d(l) => l.name.as_deref(),
            Layer::BatchNorm(l) => l.name.as_deref(),
            Layer::LayerNorm(l) => l.name.as_deref(),
            Layer::Relu(l)
            | Layer::Relu6(l)
            | Layer::Sigmoid(l)
            | Layer::Tanh(l)
            | Layer::GlobalAvgPool(l)
            | Layer::Flatten(l) => l.name.as_deref(),
            Layer::Gelu(l) => l.name.as_deref(),
            Layer::Softmax(l) => l.name.as_deref(),
            Layer::MaxPool2d(l) | Layer::AvgPool2d(l) => l.name.as_deref(),
            Layer::Dropout(l) => l.name.as_deref(),
            Layer::Reshape(l) => l.name.as_deref(),
            Layer::Residual(l) => l.name.as_deref(),
            Layer::Sequential(l) => l.name.as_deref(),
        }
    }
}

/// Where a layer sits relative to its parent, for the naming rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A top-level layer.
    Top,
    /// A child of a `sequential` block.
    Seq,
    /// A child in a residual `body`.
    Body,
    /// A child in a residual `shortcut`.
    Shortcut,
}

impl Slot {
    fn field(self) -> &'static str {
        match self {
            Slot::Top => "layers",
            Slot::Seq => "layers",
            Slot::Body => "body",
            Slot::Shortcut => "shortcut",
        }
    }
}

/// The parameter prefix of a layer: its `name` or its index, joined below the parent's prefix
/// with `.`; residual children without a name get `body.<i>` / `shortcut.<i>`.
pub(crate) fn layer_prefix(parent: &str, slot: Slot, index: usize, name: Option<&str>) -> String {
    let own = match (name, slot) {
        (Some(n), _) => n.to_string(),
        (None, Slot::Top | Slot::Seq) => index.to_string(),
        (None, Slot::Body) => format!("body.{index}"),
        (None, Slot::Shortcut) => format!("shortcut.{index}"),
    };
    if parent.is_empty() {
        own
    } else {
        format!("{parent}.{own}")
    }
}

/// Errors in the spec itself.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// Not valid JSON, or a field has the wrong type.
    #[error("invalid spec JSON: {0}")]
    Json(String),
    /// `format` or `version` is not supported.
    #[error("unsupported spec: {0}")]
    Format(String),
    /// The input or output description is invalid.
    #[error("{field}: {message}")]
    Field {
        /// `input.shape`, `output.classes`, ...
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A layer is invalid or its shapes do not chain.
    #[error("{layer}: {message}")]
    Layer {
        /// e.g. `layers[3] (conv2d "features.0")`.
        layer: String,
        /// What is wrong.
        message: String,
    },
    /// The spec exceeds a size limit.
    #[error("limit exceeded: {0}")]
    Limit(String),
}

/// The weights do not satisfy the spec; every problem is listed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("weights do not match the architecture ({} problem(s)): {}", problems.len(), problems.join("; "))]
pub struct SpecMismatch {
    /// One message per problem, e.g. `fc1.weight: expected shape [256, 64], found [256, 63]`.
    pub problems: Vec<String>,
}

/// What a tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A weight (linear/conv kernel, norm scale).
    Weight,
    /// A bias (linear/conv bias, norm shift).
    Bias,
    /// Batch-norm running mean (a buffer).
    RunningMean,
    /// Batch-norm running variance (a buffer).
    RunningVar,
}

/// One tensor the spec needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// state_dict name, e.g. `features.0.weight`.
    pub name: String,
    /// Expected shape.
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: ParamKind,
    /// Trained by backprop (false for batch-norm running stats).
    pub trainable: bool,
    /// The `type` of the layer owning it (`linear`, `conv2d`, `batch_norm`, `layer_norm`).
    pub layer_type: String,
    /// The layer prefix (name without the `.weight` suffix).
    pub layer: String,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// dtype and shape of a tensor as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMeta {
    /// safetensors dtype string: `F32`, `F16`, `BF16`, `F64`, `I64`, `U8`, ...
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Result of a successful [`ModelSpec::check_weights`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecCheck {
    /// Trainable parameter elements (weights and biases).
    pub parameter_count: u64,
    /// Buffer elements (batch-norm running stats).
    pub buffer_count: u64,
    /// Per-sample output shape (`[classes]`).
    pub output_shape: Vec<usize>,
    /// Tensors present but not used by the spec (warnings).
    pub unused: Vec<String>,
}

/// Float dtypes accepted for parameters (converted to f32 at load).
pub const FLOAT_DTYPES: [&str; 4] = ["F32", "F16", "BF16", "F64"];

impl ModelSpec {
    /// Parses and validates a spec. Errors name the offending layer by path.
    pub fn from_json(bytes: &[u8]) -> Result<ModelSpec, SpecError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| SpecError::Json(e.to_string()))?;
        // Structure limits first, on the untyped tree, so typed parsing never recurses deeply.
        if let Some(layers) = value.get("layers").and_then(|l| l.as_array()) {
            let mut count = 0;
            raw_limits(layers, "layers", 1, &mut count)?;
        }
        let spec: ModelSpec = match serde_json::from_value(value.clone()) {
            Ok(s) => s,
            Err(e) => return Err(locate_json_error(&value, e)),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Serialises the spec (pretty JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serialises: no maps with non-string keys")
    }

    /// Checks everything: format, limits, names, sizes, shape chaining, output `[classes]`.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.analyze().map(|_| ())
    }

    /// Per-sample output shape for the declared input (validates the spec).
    pub fn output_shape(&self) -> Result<Vec<usize>, SpecError> {
        self.analyze().map(|a| a.output_shape)
    }

    /// Every tensor the spec needs, in layer order. Names come from the structure only, so this
    /// works on any spec (validate it first to get meaningful shapes).
    pub fn params(&self) -> Vec<ParamInfo> {
        let mut out = Vec::new();
        collect_params(&self.layers, "", Slot::Top, &mut out);
        out
    }

    /// Number of channels the preprocessing applies to (dim 0 of the input shape).
    pub fn input_channels(&self) -> usize {
        self.input.shape.first().copied().unwrap_or(1)
    }

    /// Checks that `logical` (name → dtype/shape as the model sees them, after dequantization)
    /// holds every tensor the spec needs with the right shape and a float dtype. All problems
    /// are listed at once; tensors not used by the spec are returned as warnings.
    /// `<prefix>.num_batches_tracked` is accepted and ignored.
    pub fn check_weights(&self, logical: &BTreeMap<String, TensorMeta>) -> Result<SpecCheck, SpecMismatch> {
        let analysis = self.analyze().map_err(|e| SpecMismatch { problems: vec![e.to_string()] })?;
        let mut problems = Vec::new();
        let mut used = BTreeSet::new();
        let (mut parameter_count, mut buffer_count) = (0u64, 0u64);
        for p in &analysis.params {
            used.insert(p.name.as_str());
            match logical.get(&p.name) {
                None => problems.push(format!("{}: missing (expected {} {:?})", p.name, kind_word(p.kind), p.shape)),
                Some(meta) => {
                    if meta.shape != p.shape {
                        problems.push(format!("{}: expected shape {:?}, found {:?}", p.name, p.shape, meta.shape));
                    }
                    if !FLOAT_DTYPES.contains(&meta.dtype.to_ascii_uppercase().as_str()) {
                        problems.push(format!(
                            "{}: dtype {} is not a float type (expected one of F32, F16, BF16, F64)",
                            p.name, meta.dtype
                        ));
                    }
                }
            }
            if p.trainable {
                parameter_count += p.numel() as u64;
            } else {
                buffer_count += p.numel() as u64;
            }
        }
        let bn_prefixes: BTreeSet<&str> =
            analysis.params.iter().filter(|p| p.kind == ParamKind::RunningMean).map(|p| p.layer.as_str()).collect();
        let unused = logical
            .keys()
            .filter(|k| !used.contains(k.as_str()))
            .filter(|k| k.strip_suffix(".num_batches_tracked").is_none_or(|prefix| !bn_prefixes.contains(prefix)))
            .cloned()
            .collect();
        if problems.is_empty() {
            Ok(SpecCheck { parameter_count, buffer_count, output_shape: analysis.output_shape, unused })
        } else {
            Err(SpecMismatch { problems })
        }
    }

    pub(crate) fn analyze(&self) -> Result<Analysis, SpecError> {
        if self.format != FORMAT {
            return Err(SpecError::Format(format!("format must be \"{FORMAT}\", got \"{}\"", self.format)));
        }
        if self.version != VERSION {
            return Err(SpecError::Format(format!(
                "version {} is not supported (this server reads version {VERSION})",
                self.version
            )));
        }
        let shape = &self.input.shape;
        if shape.is_empty() || shape.len() > MAX_INPUT_RANK {
            return Err(field_err(
                "input.shape",
                format!("rank must be 1 to {MAX_INPUT_RANK} (per sample, no batch dim), got {shape:?}"),
            ));
        }
        if shape.contains(&0) {
            return Err(field_err("input.shape", format!("sizes must be positive, got {shape:?}")));
        }
        check_activation(shape).map_err(|m| field_err("input.shape", m))?;
        if let Some(pre) = &self.input.preprocess {
            let channels = shape[0];
            if !pre.scale.is_finite() || pre.scale == 0.0 {
                return Err(field_err("input.preprocess.scale", "must be finite and non-zero"));
            }
            for (field, values) in [("mean", &pre.mean), ("std", &pre.std)] {
                if !(values.is_empty() || values.len() == 1 || values.len() == channels) {
                    return Err(field_err(
                        &format!("input.preprocess.{field}"),
                        format!("needs 1 or {channels} values (one per channel), got {}", values.len()),
                    ));
                }
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(field_err(&format!("input.preprocess.{field}"), "values must be finite"));
                }
            }
            if pre.std.iter().any(|v| *v <= 0.0) {
                return Err(field_err("input.preprocess.std", "values must be positive"));
            }
        }
        if self.output.classes == 0 {
            return Err(field_err("output.classes", "must be at least 1"));
        }
        if let Some(labels) = &self.output.labels {
            if labels.len() != self.output.classes {
                return Err(field_err(
                    "output.labels",
                    format!("has {} entries but output.classes is {}", labels.len(), self.output.classes),
                ));
            }
        }
        let ends_in_softmax = matches!(self.layers.last(), Some(Layer::Softmax(_)));
        match (self.output.kind, ends_in_softmax) {
            (OutputKind::Logits, true) => return Err(field_err(
                "output.kind",
                "the layers end in softmax, so the output is \"probabilities\" (or drop the softmax to output logits)",
            )),
            (OutputKind::Probabilities, false) => {
                return Err(field_err("output.kind", "\"probabilities\" needs a final softmax layer"))
            }
            _ => {}
        }
        let mut walker = Walker::default();
        let out = walker.walk(&self.layers, "", "", Slot::Top, 1, shape.clone())?;
        if out != [self.output.classes] {
            return Err(field_err(
                "output",
                format!(
                    "the layers produce per-sample shape {out:?}, but output.classes = {} needs [{}]",
                    self.output.classes, self.output.classes
                ),
            ));
        }
        Ok(Analysis { output_shape: out, params: walker.params })
    }
}

fn kind_word(k: ParamKind) -> &'static str {
    match k {
        ParamKind::Weight => "weight",
        ParamKind::Bias => "bias",
        ParamKind::RunningMean => "running mean",
        ParamKind::RunningVar => "running variance",
    }
}

fn field_err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Field { field: field.to_string(), message: message.into() }
}

/// Result of validating a spec.
#[derive(Debug, Clone)]
pub(crate) struct Analysis {
    pub output_shape: Vec<usize>,
    pub params: Vec<ParamInfo>,
}

fn check_activation(shape: &[usize]) -> Result<u64, String> {
    let n = checked_numel(shape).filter(|n| *n <= MAX_ACTIVATION_ELEMENTS);
    n.ok_or_else(|| format!("activation {shape:?} exceeds {MAX_ACTIVATION_ELEMENTS} elements per sample"))
}

fn checked_numel(shape: &[usize]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Walks the untyped JSON to enforce depth and count limits before typed parsing.
fn raw_limits(layers: &[serde_json::Value], path: &str, depth: usize, count: &mut usize) -> Result<(), SpecError> {
    if depth > MAX_DEPTH {
        return Err(SpecError::Limit(format!("{path}: blocks are nested deeper than {MAX_DEPTH} levels")));
    }
    for (i, layer) in layers.iter().enumerate() {
        *count += 1;
        if *count > MAX_LAYERS {
            return Err(SpecError::Limit(format!("more than {MAX_LAYERS} layers")));
        }
        for field in ["body", "shortcut", "layers"] {
            if let Some(children) = layer.get(field).and_then(|c| c.as_array()) {
                raw_limits(children, &format!("{path}[{i}].{field}"), depth + 1, count)?;
            }
        }
    }
    Ok(())
}

/// Turns a serde error on the whole spec into one naming the deepest failing layer.
fn locate_json_error(value: &serde_json::Value, err: serde_json::Error) -> SpecError {
    if let Some(layers) = value.get("layers").and_then(|l| l.as_array()) {
        if let Some(e) = first_bad_layer(layers, "layers") {
            return e;
        }
    }
    SpecError::Json(err.to_string())
}

fn first_bad_layer(layers: &[serde_json::Value], path: &str) -> Option<SpecError> {
    for (i, raw) in layers.iter().enumerate() {
        let here = format!("{path}[{i}]");
        for field in ["body", "shortcut", "layers"] {
            if let Some(children) = raw.get(field).and_then(|c| c.as_array()) {
                if let Some(e) = first_bad_layer(children, &format!("{here}.{field}")) {
                    return Some(e);
                }
            }
        }
        if let Err(e) = serde_json::from_value::<Layer>(raw.clone()) {
            let ty = raw.get("type").and_then(|t| t.as_str()).unwrap_or("?");
            let label = match raw.get("name").and_then(|n| n.as_str()) {
                Some(n) => format!("{here} ({ty} \"{n}\")"),
                None => format!("{here} ({ty})"),
            };
            let message = if raw.get("type").is_none() { "missing field `type`".to_string() } else { e.to_string() };
            return Some(SpecError::Layer { layer: label, message });
        }
    }
    None
}

fn collect_params(layers: &[Layer], parent: &str, slot: Slot, out: &mut Vec<ParamInfo>) {
    for (i, layer) in layers.iter().enumerate() {
        let prefix = layer_prefix(parent, slot, i, layer.name());
        layer_params(layer, &prefix, out);
        match layer {
            Layer::Residual(r) => {
                collect_params(&r.body, &prefix, Slot::Body, out);
                if let Some(s) = &r.shortcut {
                    collect_params(s, &prefix, Slot::Shortcut, out);
                }
            }
            Layer::Sequential(s) => collect_params(&s.layers, &prefix, Slot::Seq, out),
            _ => {}
        }
    }
}

/// The tensors of one (non-block) layer.
fn layer_params(layer: &Layer, prefix: &str, out: &mut Vec<ParamInfo>) {
    let mut push = |suffix: &str, shape: Vec<usize>, kind: ParamKind| {
        out.push(ParamInfo {
            name: format!("{prefix}.{suffix}"),
            shape,
            kind,
            trainable: matches!(kind, ParamKind::Weight | ParamKind::Bias),
            layer_type: layer.type_name().to_string(),
            layer: prefix.to_string(),
        })
    };
    match layer {
        Layer::Linear(l) => {
            push("weight", vec![l.out_features, l.in_features], ParamKind::Weight);
            if l.bias {
                push("bias", vec![l.out_features], ParamKind::Bias);
            }
        }
        Layer::Conv2d(c) => {
            let per_group = c.in_channels / c.groups.max(1);
            push("weight", vec![c.out_channels, per_group, c.kernel_size.0, c.kernel_size.1], ParamKind::Weight);
            if c.bias {
                push("bias", vec![c.out_channels], ParamKind::Bias);
            }
        }
        Layer::BatchNorm(b) => {
            if b.affine {
                push("weight", vec![b.num_features], ParamKind::Weight);
                push("bias", vec![b.num_features], ParamKind::Bias);
            }
            push("running_mean", vec![b.num_features], ParamKind::RunningMean);
            push("running_var", vec![b.num_features], ParamKind::RunningVar);
        }
        Layer::LayerNorm(l) if l.elementwise_affine => {
            push("weight", l.normalized_shape.clone(), ParamKind::Weight);
            push("bias", l.normalized_shape.clone(), ParamKind::Bias);
        }
        _ => {}
    }
}

#[derive(Default)]
struct Walker {
    params: Vec<ParamInfo>,
    names: BTreeSet<String>,
    layers: usize,
    total: u64,
}

impl Walker {
    /// Validates `layers` and infers their output shape. `path` is the JSON path of the list
    /// owner (empty at the top), `parent` the parameter prefix of the owner.
    fn walk(
        &mut self,
        layers: &[Layer],
        path: &str,
        parent: &str,
        slot: Slot,
        depth: usize,
        mut shape: Vec<usize>,
    ) -> Result<Vec<usize>, SpecError> {
        if depth > MAX_DEPTH {
            return Err(SpecError::Limit(format!("{path}: blocks are nested deeper than {MAX_DEPTH} levels")));
        }
        for (i, layer) in layers.iter().enumerate() {
            self.layers += 1;
            if self.layers > MAX_LAYERS {
                return Err(SpecError::Limit(format!("more than {MAX_LAYERS} layers")));
            }
            let field = slot.field();
            let here = if path.is_empty() { format!("{field}[{i}]") } else { format!("{path}.{field}[{i}]") };
            let prefix = layer_prefix(parent, slot, i, layer.name());
            let label = format!("{here} ({} \"{prefix}\")", layer.type_name());
            let err = |message: String| SpecError::Layer { layer: label.clone(), message };
            if let Some(name) = layer.name() {
                check_name(name).map_err(&err)?;
            }
            let mut own = Vec::new();
            layer_params(layer, &prefix, &mut own);
            for p in &own {
                let n = checked_numel(&p.shape).filter(|n| *n <= MAX_TENSOR_ELEMENTS).ok_or_else(|| {
                    err(format!("tensor {} {:?} exceeds {MAX_TENSOR_ELEMENTS} elements", p.name, p.shape))
                })?;
                self.total = self.total.saturating_add(n);
                if self.total > MAX_TOTAL_PARAMETERS {
                    return Err(SpecError::Limit(format!(
                        "{label}: the network would need more than {MAX_TOTAL_PARAMETERS} parameters"
                    )));
                }
                if !self.names.insert(p.name.clone()) {
                    return Err(err(format!(
                        "parameter name {} is used twice; give the layers distinct names",
                        p.name
                    )));
                }
            }
            shape = match layer {
                Layer::Residual(r) => {
                    if r.body.is_empty() {
                        return Err(err("body must contain at least one layer".into()));
                    }
                    let b = self.walk(&r.body, &here, &prefix, Slot::Body, depth + 1, shape.clone())?;
                    let s = match &r.shortcut {
                        Some(s) => self.walk(s, &here, &prefix, Slot::Shortcut, depth + 1, shape.clone())?,
                        None => shape.clone(),
                    };
                    if b != s {
                        return Err(err(format!(
                            "body produces {b:?} but the shortcut produces {s:?}; they must match to be added{}",
                            if r.shortcut.is_none() { " (add a projection shortcut)" } else { "" }
                        )));
                    }
                    b
                }
                Layer::Sequential(s) => self.walk(&s.layers, &here, &prefix, Slot::Seq, depth + 1, shape.clone())?,
                other => infer_layer(other, &shape).map_err(&err)?,
            };
            check_activation(&shape).map_err(&err)?;
            self.params.extend(own);
        }
        Ok(shape)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!("name {name:?} is invalid: use 1-200 characters from A-Z a-z 0-9 _ - and inner dots"))
    }
}

/// Shape of one non-block layer's output per sample, or why the input does not fit.
fn infer_layer(layer: &Layer, shape: &[usize]) -> Result<Vec<usize>, String> {
    match layer {
        Layer::Linear(l) => {
            if l.in_features == 0 || l.out_features == 0 {
                return Err("in_features and out_features must be positive".into());
            }
            let last = *shape.last().expect("shapes are never empty");
            if last != l.in_features {
                return Err(format!(
                    "in_features is {} but the incoming shape is {shape:?} (last dim {last}){}",
                    l.in_features,
                    if shape.len() > 1 { "; add a flatten layer before it?" } else { "" }
                ));
            }
            let mut out = shape.to_vec();
            *out.last_mut().expect("non-empty") = l.out_features;
            Ok(out)
        }
        Layer::Conv2d(c) => {
            if c.in_channels == 0 || c.out_channels == 0 {
                return Err("in_channels and out_channels must be positive".into());
            }
            if c.kernel_size.0 == 0 || c.kernel_size.1 == 0 || c.stride == 0 || c.dilation == 0 || c.groups == 0 {
                return Err("kernel_size, stride, dilation and groups must be positive".into());
            }
            if c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                return Err(format!(
                    "groups ({}) must divide in_channels ({}) and out_channels ({})",
                    c.groups, c.in_channels, c.out_channels
                ));
            }
            let [ch, h, w] = chw(shape, "conv2d")?;
            if ch != c.in_channels {
                return Err(format!(
                    "in_channels is {} but the incoming shape is {shape:?} ({ch} channels)",
                    c.in_channels
                ));
            }
            let oh = conv_out(h, c.kernel_size.0, c.stride, c.padding.0, c.dilation)
                .ok_or_else(|| window_err(shape, c.kernel_size, c.padding, c.dilation))?;
            let ow = conv_out(w, c.kernel_size.1, c.stride, c.padding.1, c.dilation)
                .ok_or_else(|| window_err(shape, c.kernel_size, c.padding, c.dilation))?;
            Ok(vec![c.out_channels, oh, ow])
        }
        Layer::BatchNorm(b) => {
            if b.num_features == 0 {
                return Err("num_features must be positive".into());
            }
            if !(b.eps.is_finite() && b.eps > 0.0) {
                return Err("eps must be positive".into());
            }
            if !(0.0..=1.0).contains(&b.momentum) {
                return Err("momentum must be in [0, 1]".into());
            }
            if shape.len() > 3 {
                return Err(format!("expects [C], [C, L] or [C, H, W], got {shape:?}"));
            }
            if shape[0] != b.num_features {
                return Err(format!(
                    "num_features is {} but the incoming shape is {shape:?} ({} channels)",
                    b.num_features, shape[0]
                ));
            }
            Ok(shape.to_vec())
        }
        Layer::LayerNorm(l) => {
            let ns = &l.normalized_shape;
            if ns.is_empty() || ns.contains(&0) {
                return Err("normalized_shape must be a non-empty list of positive sizes".into());
            }
            if !(l.eps.is_finite() && l.eps > 0.0) {
                return Err("eps must be positive".into());
            }
            if ns.len() > shape.len() || shape[shape.len() - ns.len()..] != ns[..] {
                return Err(format!(
                    "normalized_shape {ns:?} must equal the trailing dims of the incoming shape {shape:?}"
                ));
            }
            Ok(shape.to_vec())
        }
        Layer::Relu(_) | Layer::Relu6(_) | Layer::Gelu(_) | Layer::Sigmoid(_) | Layer::Tanh(_) => Ok(shape.to_vec()),
        Layer::Softmax(s) => {
            resolve_dim(s.dim, shape.len())?;
            Ok(shape.to_vec())
        }
        Layer::MaxPool2d(p) | Layer::AvgPool2d(p) => {
            let k = p.kernel_size;
            let s = p.stride();
            if k.0 == 0 || k.1 == 0 || s.0 == 0 || s.1 == 0 {
                return Err("kernel_size and stride must be positive".into());
            }
            if p.padding.0 * 2 > k.0 || p.padding.1 * 2 > k.1 {
                return Err(format!(
                    "padding {:?} must be at most half of kernel_size {:?}",
                    (p.padding.0, p.padding.1),
                    (k.0, k.1)
                ));
            }
            let [ch, h, w] = chw(shape, layer.type_name())?;
            let oh = conv_out(h, k.0, s.0, p.padding.0, 1).ok_or_else(|| window_err(shape, k, p.padding, 1))?;
            let ow = conv_out(w, k.1, s.1, p.padding.1, 1).ok_or_else(|| window_err(shape, k, p.padding, 1))?;
            Ok(vec![ch, oh, ow])
        }
        Layer::GlobalAvgPool(_) => {
            if shape.len() < 2 {
                return Err(format!("expects [C, H, W] or [C, L], got {shape:?}"));
            }
            Ok(vec![shape[0]])
        }
        Layer::Flatten(_) => Ok(vec![shape.iter().product()]),
        Layer::Dropout(d) => {
            if !(0.0..1.0).contains(&d.p) {
                return Err(format!("p must be in [0, 1), got {}", d.p));
            }
            Ok(shape.to_vec())
        }
        Layer::Reshape(r) => reshape_target(&r.shape, shape),
        Layer::Residual(_) | Layer::Sequential(_) => unreachable!("blocks are walked by Walker"),
    }
}

/// Per-sample output shape of any layer, blocks included (no limit or name checks: used on
/// validated specs while building networks).
pub(crate) fn layer_output_shape(layer: &Layer, shape: &[usize]) -> Result<Vec<usize>, String> {
    let chain =
        |layers: &[Layer], shape: &[usize]| layers.iter().try_fold(shape.to_vec(), |s, l| layer_output_shape(l, &s));
    match layer {
        Layer::Residual(r) => chain(&r.body, shape),
        Layer::Sequential(s) => chain(&s.layers, shape),
        other => infer_layer(other, shape),
    }
}

/// Resolves a reshape target (one `-1` allowed) against the incoming per-sample shape.
pub(crate) fn reshape_target(target: &[i64], shape: &[usize]) -> Result<Vec<usize>, String> {
    if target.is_empty() || target.len() > 8 {
        return Err("shape must have 1 to 8 entries".into());
    }
    let total = checked_numel(shape).ok_or("incoming shape overflows")?;
    let mut known = 1u64;
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => infer = Some(i),
            -1 => return Err("at most one entry may be -1".into()),
            d if d <= 0 => return Err(format!("sizes must be positive (or a single -1), got {d}")),
            d => known = known.checked_mul(d as u64).ok_or("shape overflows")?,
        }
    }
    let mut out: Vec<usize> = target.iter().map(|&d| d.max(0) as usize).collect();
    match infer {
        Some(i) if total % known == 0 => out[i] = (total / known) as usize,
        None if known == total => {}
        _ => return Err(format!("cannot reshape {shape:?} ({total} elements) into {target:?}")),
    }
    Ok(out)
}

pub(crate) fn resolve_dim(dim: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if (0..r).contains(&d) {
        Ok(d as usize)
    } else {
        Err(format!("dim {dim} is out of range for a per-sample rank of {rank}"))
    }
}

fn chw(shape: &[usize], what: &str) -> Result<[usize; 3], String> {
    match shape {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => Err(format!("{what} expects a per-sample [C, H, W] input, got {shape:?}")),
    }
}

fn window_err(shape: &[usize], k: Pair, p: Pair, dilation: usize) -> String {
    format!(
        "kernel {:?} (dilation {dilation}) does not fit the incoming shape {shape:?} with padding {:?}",
        (k.0, k.1),
        (p.0, p.1)
    )
}

/// Output length of a convolution/pooling window, or None when the window does not fit.
fn conv_out(len: usize, k: usize, stride: usize, pad: usize, dilation: usize) -> Option<usize> {
    let padded = len.checked_add(pad.checked_mul(2)?)?;
    let span = dilation.checked_mul(k - 1)?.checked_add(1)?;
    if padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

impl fmt::Display for InputDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("unit enum serialises");
        write!(f, "{}", s.as_str().unwrap_or("?"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp_json() -> String {
        r#"{"format": "modelpress.spec", "version": 1,
            "input": {"shape": [64]},
            "output": {"classes": 10},
            "layers": [
              {"type": "linear", "name": "fc1", "in_features": 64, "out_features": 256},
              {"type": "relu"},
              {"type": "linear", "name": "fc2", "in_features": 256, "out_features": 256},
              {"type": "relu"},
              {"type": "linear", "name": "fc3", "in_features": 256, "out_features": 10}
            ]}"#
        .to_string()
    }

    fn with_layers(input: &str, classes: usize, layers: &str) -> String {
        format!(
            r#"{{"format": "modelpress.spec", "version": 1, "input": {{"shape": {input}}},
                "output": {{"classes": {classes}}}, "layers": {layers}}}"#
        )
    }

    fn err(json: &str) -> String {
        ModelSpec::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    fn meta(shape: &[usize]) -> TensorMeta {
        TensorMeta { dtype: "F32".into(), shape: shape.to_vec() }
    }

    #[test]
    fn parses_mlp_and_lists_params() {
        let spec = ModelSpec::from_json(mlp_json().as_bytes()).unwrap();
        assert_eq!(spec.output_shape().unwrap(), vec![10]);
        let params = spec.params();
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]);
        assert_eq!(params[0].shape, vec![256, 64]);
        assert!(params.iter().all(|p| p.trainable));
        // Round trip through JSON keeps the spec identical.
        let again = ModelSpec::from_json(spec.to_json().as_bytes()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn index_naming_follows_nn_sequential() {
        let json = with_layers(
            "[3, 8, 8]",
            4,
            r#"[
              {"type": "conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": 3, "padding": 1, "bias": false},
              {"type": "batch_norm", "num_features": 8},
              {"type": "residual", "body": [
                  {"type": "conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 8},
                  {"type": "relu"},
                  {"type": "conv2d", "name": "pw", "in_channels": 8, "out_channels": 16, "kernel_size": 1}],
               "shortcut": [{"type": "conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": 1, "bias": false}]},
              {"type": "sequential", "name": "head", "layers": [
                  {"type": "global_avg_pool"},
                  {"type": "linear", "in_features": 16, "out_features": 4}]}
            ]"#,
        );
        let spec = ModelSpec::from_json(json.as_bytes()).unwrap();
        let params = spec.params();
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "0.weight",
                "1.weight",
                "1.bias",
                "1.running_mean",
                "1.running_var",
                "2.body.0.weight",
                "2.body.0.bias",
                "2.pw.weight",
                "2.pw.bias",
                "2.shortcut.0.weight",
                "head.1.weight",
                "head.1.bias"
            ]
        );
        // Depthwise kernel: [out, in/groups, kh, kw].
        assert_eq!(params[5].shape, vec![8, 1, 3, 3]);
        let bn: Vec<_> = params.iter().filter(|p| p.layer == "1").collect();
        assert!(bn.iter().any(|p| p.kind == ParamKind::RunningVar && !p.trainable));
        assert_eq!(spec.output_shape().unwrap(), vec![4]);
    }

    #[test]
    fn shape_mismatch_names_the_layer() {
        let json = with_layers(
            "[64]",
            10,
            r#"[{"type": "linear", "name": "fc1", "in_features": 64, "out_features": 32},
                {"type": "relu"},
                {"type": "linear", "name": "fc2", "in_features": 100, "out_features": 10}]"#,
        );
        let e = err(&json);
        assert!(e.starts_with("layers[2] (linear \"fc2\"): in_features is 100"), "{e}");
        assert!(e.contains("[32]"), "{e}");

        let json = with_layers(
            "[1, 28, 28]",
            10,
            r#"[{"type": "sequential", "name": "features", "layers": [
                  {"type": "conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": 3}]}]"#,
        );
        let e = err(&json);
        assert!(e.starts_with("layers[0].layers[0] (conv2d \"features.0\"): in_channels is 3"), "{e}");

        // Output must be [classes].
        let json = with_layers("[64]", 7, r#"[{"type": "linear", "in_features": 64, "out_features": 10}]"#);
        assert!(err(&json).contains("output.classes = 7"));

        // Residual branches that cannot be added.
        let json = with_layers(
            "[8]",
            4,
            r#"[{"type": "residual", "body": [{"type": "linear", "in_features": 8, "out_features": 4}]}]"#,
        );
        let e = err(&json);
        assert!(e.contains("layers[0] (residual \"0\")") && e.contains("shortcut"), "{e}");
    }

    #[test]
    fn malformed_specs_are_rejected() {
        let unknown_type = with_layers("[64]", 10, r#"[{"type": "conv3d", "in_channels": 1}]"#);
        let e = err(&unknown_type);
        assert!(e.starts_with("layers[0] (conv3d)") && e.contains("unknown variant"), "{e}");

        let unknown_field = with_layers(
            "[64]",
            10,
            r#"[{"type": "relu"}, {"type": "linear", "name": "fc", "in_features": 64, "out_features": 10, "bais": true}]"#,
        );
        let e = err(&unknown_field);
        assert!(e.starts_with("layers[1] (linear \"fc\")") && e.contains("bais"), "{e}");

        let negative = with_layers("[64]", 10, r#"[{"type": "linear", "in_features": 64, "out_features": -10}]"#);
        assert!(err(&negative).starts_with("layers[0] (linear)"));

        let nested_negative = with_layers(
            "[64]",
            10,
            r#"[{"type": "sequential", "layers": [{"type": "dropout", "p": 0.1}, {"type": "linear", "in_features": -1, "out_features": 10}]}]"#,
        );
        assert!(err(&nested_negative).starts_with("layers[0].layers[1] (linear)"));

        let zero = with_layers("[64]", 10, r#"[{"type": "linear", "in_features": 64, "out_features": 0}]"#);
        assert!(err(&zero).contains("must be positive"));

        let zero_input = with_layers("[0]", 10, "[]");
        assert!(err(&zero_input).starts_with("input.shape"));

        let bad_p = with_layers("[10]", 10, r#"[{"type": "dropout", "p": 1.0}]"#);
        assert!(err(&bad_p).contains("p must be in [0, 1)"));

        let mut bad_version = mlp_json().replace("\"version\": 1", "\"version\": 2");
        assert!(err(&bad_version).contains("version 2 is not supported"));
        bad_version = mlp_json().replace("modelpress.spec", "onnx");
        assert!(err(&bad_version).contains("format must be"));

        assert!(err("{not json").starts_with("invalid spec JSON"));
    }

    #[test]
    fn absurd_sizes_are_rejected_without_allocating() {
        let huge_linear = with_layers(
            "[64]",
            10,
            r#"[{"type": "linear", "in_features": 64, "out_features": 100000000000},
                {"type": "linear", "in_features": 100000000000, "out_features": 10}]"#,
        );
        let e = err(&huge_linear);
        assert!(e.contains("exceeds") && e.contains("layers[0]"), "{e}");

        let overflow =
            with_layers("[64]", 10, r#"[{"type": "linear", "in_features": 64, "out_features": 18446744073709551615}]"#);
        assert!(err(&overflow).contains("exceeds"));

        let huge_input = with_layers("[100000, 100000, 100000]", 10, "[]");
        assert!(err(&huge_input).contains("exceeds"));

        // Many medium tensors: each allowed, together above the total.
        let layers: Vec<String> =
            (0..5).map(|_| r#"{"type": "linear", "in_features": 40000, "out_features": 40000}"#.to_string()).collect();
        let many = with_layers("[40000]", 40000, &format!("[{}]", layers.join(",")));
        assert!(err(&many).contains("parameters"));

        let conv = with_layers(
            "[3, 32, 32]",
            10,
            r#"[{"type": "conv2d", "in_channels": 3, "out_channels": 4000000, "kernel_size": 31, "padding": 15}]"#,
        );
        assert!(err(&conv).contains("exceeds"));
    }

    #[test]
    fn depth_and_count_limits() {
        let mut inner = r#"{"type": "relu"}"#.to_string();
        for _ in 0..20 {
            inner = format!(r#"{{"type": "sequential", "layers": [{inner}]}}"#);
        }
        let deep = with_layers("[10]", 10, &format!("[{inner}]"));
        assert!(err(&deep).contains("nested deeper than 16"));

        let many: Vec<&str> = vec![r#"{"type": "relu"}"#; MAX_LAYERS + 1];
        let wide = with_layers("[10]", 10, &format!("[{}]", many.join(",")));
        assert!(err(&wide).contains("more than 1000 layers"));

        let ok: Vec<&str> = vec![r#"{"type": "relu"}"#; 50];
        assert!(ModelSpec::from_json(with_layers("[10]", 10, &format!("[{}]", ok.join(","))).as_bytes()).is_ok());
    }

    #[test]
    fn duplicate_and_invalid_names() {
        let dup = with_layers(
            "[8]",
            8,
            r#"[{"type": "linear", "name": "fc", "in_features": 8, "out_features": 8},
                {"type": "linear", "name": "fc", "in_features": 8, "out_features": 8}]"#,
        );
        assert!(err(&dup).contains("used twice"));
        let bad = with_layers("[8]", 8, r#"[{"type": "linear", "name": "../x", "in_features": 8, "out_features": 8}]"#);
        assert!(err(&bad).contains("is invalid"));
    }

    #[test]
    fn check_weights_lists_every_problem() {
        let spec = ModelSpec::from_json(mlp_json().as_bytes()).unwrap();
        let mut w = BTreeMap::new();
        w.insert("fc1.weight".to_string(), meta(&[256, 63]));
        w.insert("fc1.bias".to_string(), meta(&[256]));
        w.insert("fc2.weight".to_string(), TensorMeta { dtype: "I64".into(), shape: vec![256, 256] });
        w.insert("fc2.bias".to_string(), meta(&[256]));
        w.insert("fc3.weight".to_string(), meta(&[10, 256]));
        w.insert("extra.weight".to_string(), meta(&[3]));
        let e = spec.check_weights(&w).unwrap_err();
        assert_eq!(e.problems.len(), 3, "{:?}", e.problems);
        assert!(e.problems[0].contains("fc1.weight: expected shape [256, 64], found [256, 63]"));
        assert!(e.problems[1].contains("fc2.weight: dtype I64 is not a float type"));
        assert!(e.problems[2].contains("fc3.bias: missing"));

        w.insert("fc1.weight".to_string(), meta(&[256, 64]));
        w.insert("fc2.weight".to_string(), TensorMeta { dtype: "BF16".into(), shape: vec![256, 256] });
        w.insert("fc3.bias".to_string(), meta(&[10]));
        let ok = spec.check_weights(&w).unwrap();
        assert_eq!(ok.parameter_count, 64 * 256 + 256 + 256 * 256 + 256 + 2570);
        assert_eq!(ok.unused, vec!["extra.weight".to_string()]);
        assert_eq!(ok.output_shape, vec![10]);
    }

    #[test]
    fn batch_norm_buffers_and_num_batches_tracked() {
        let json = with_layers(
            "[4]",
            2,
            r#"[{"type": "batch_norm", "name": "bn", "num_features": 4},
                {"type": "linear", "in_features": 4, "out_features": 2}]"#,
        );
        let spec = ModelSpec::from_json(json.as_bytes()).unwrap();
        let mut w = BTreeMap::new();
        for p in spec.params() {
            w.insert(p.name.clone(), meta(&p.shape));
        }
        w.insert("bn.num_batches_tracked".into(), TensorMeta { dtype: "I64".into(), shape: vec![] });
        let ok = spec.check_weights(&w).unwrap();
        assert!(ok.unused.is_empty());
        assert_eq!(ok.buffer_count, 8);
        assert_eq!(ok.parameter_count, 8 + 10);
    }

    #[test]
    fn pooling_and_reshape_shapes() {
        let json = with_layers(
            "[1, 28, 28]",
            10,
            r#"[{"type": "conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": [3, 5], "padding": [1, 2], "stride": 2},
                {"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1},
                {"type": "avg_pool2d", "kernel_size": 2},
                {"type": "reshape", "shape": [4, -1]},
                {"type": "layer_norm", "normalized_shape": 9},
                {"type": "flatten"},
                {"type": "linear", "in_features": 36, "out_features": 10},
                {"type": "softmax"}]"#,
        );
        assert!(err(&json).contains("output.kind"));
        let json = json.replace(r#""classes": 10}"#, r#""classes": 10, "kind": "probabilities"}"#);
        let mut spec = ModelSpec::from_json(json.as_bytes()).unwrap();
        assert_eq!(spec.output_shape().unwrap(), vec![10]);
        // 28 -conv s2-> 14 -max k3 s2 p1-> 7 -avg k2-> 3.
        spec.layers.truncate(3);
        spec.output.classes = 4;
        spec.output.kind = OutputKind::Logits;
        assert!(spec.validate().unwrap_err().to_string().contains("[4, 3, 3]"));
    }
}
