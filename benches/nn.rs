//! Benchmarks of the execution engine (`modelpress::nn`): inference latency of the digits
//! teacher, training throughput of the digits MLP and of the small MNIST CNN, the distillation
//! pair (conv-heavy GAP teacher and its depthwise-separable student: training and forward), and
//! a one-shot full MNIST CNN training run (time to ≥ 95 % test accuracy).
//!
//! Run: `cargo bench --bench nn`. Thread counts follow candle's defaults (`RAYON_NUM_THREADS`
//! to pin them). Set `NN_BENCH_SKIP_FULL=1` to skip the one-shot MNIST run.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modelpress::nn::distill::{derive_student, StudentTemplate};
use modelpress::nn::{
    evaluate, train, Dataset, Init, LrSchedule, ModelSpec, Network, NoHooks, OptimizerConfig, Split, TrainConfig,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn spec(name: &str) -> ModelSpec {
    let bytes = std::fs::read(format!("{ROOT}/examples/{name}.spec.json")).expect("example spec");
    ModelSpec::from_json(&bytes).expect("valid example spec")
}

fn dataset(name: &str) -> Dataset {
    Dataset::load(Path::new(&format!("{ROOT}/tests/fixtures/{name}.safetensors"))).expect("fixture")
}

fn adamw(lr: f64) -> OptimizerConfig {
    OptimizerConfig::AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 }
}

fn teacher_forward(c: &mut Criterion) {
    let weights: HashMap<String, Tensor> =
        candle_core::safetensors::load(format!("{ROOT}/tests/fixtures/teacher_digits.safetensors"), &Device::Cpu)
            .expect("teacher");
    let net = Network::from_tensors(&spec("digits-mlp"), &weights).expect("teacher builds");
    let test = dataset("digits").test.expect("test split");
    let mut group = c.benchmark_group("digits_teacher_forward");
    for batch in [1usize, 8, 64] {
        let x = test.x.narrow(0, 0, batch).expect("batch");
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &x, |b, x| {
            b.iter(|| net.forward(x).expect("forward"))
        });
    }
    group.finish();
}

fn train_one_epoch(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_epoch");
    group.sample_size(10);

    let digits = dataset("digits").train.expect("train split");
    let mlp = spec("digits-mlp");
    let cfg = TrainConfig { epochs: 1, batch_size: 128, optimizer: adamw(1e-3), ..Default::default() };
    group.throughput(Throughput::Elements(digits.len() as u64));
    group.bench_function("digits_mlp_1437_bs128", |b| {
        b.iter(|| train(&mlp, &digits, &cfg, Init::Random, &mut NoHooks).expect("train"))
    });

    let mnist = dataset("mnist5k").train.expect("train split").head(512).expect("head");
    let cnn = spec("mnist-cnn");
    let cfg = TrainConfig { batch_size: 64, ..cfg };
    group.throughput(Throughput::Elements(mnist.len() as u64));
    group.bench_function("mnist_cnn_512_bs64", |b| {
        b.iter(|| train(&cnn, &mnist, &cfg, Init::Random, &mut NoHooks).expect("train"))
    });
    group.finish();

    let mut group = c.benchmark_group("mnist_cnn_forward");
    let weights = train(&cnn, &mnist, &cfg, Init::Random, &mut NoHooks).expect("train").params;
    let net = Network::from_tensors(&cnn, &weights).expect("cnn builds");
    let x = mnist.x.narrow(0, 0, 64).expect("batch");
    group.throughput(Throughput::Elements(64));
    group.bench_function("64", |b| b.iter(|| net.forward(&x).expect("forward")));
    group.finish();
}

/// The mnist5k distillation pair: `examples/mnist-cnn-gap.spec.json` (24k parameters, most in
/// convolutions) and the student derived with `{"width": 1, "depthwise_separable": true}` (4.1k).
/// Training goes through the custom convolution backward passes, forward through the depthwise
/// kernel (`src/nn/depthwise.rs`) and candle's convolution.
fn distill_pair(c: &mut Criterion) {
    let teacher = spec("mnist-cnn-gap");
    let template = StudentTemplate { width: 1.0, depthwise_separable: true, depth: None };
    let student = derive_student(&teacher, &template).expect("student derives");
    let mnist = dataset("mnist5k").train.expect("train split").head(512).expect("head");
    let cfg = TrainConfig { epochs: 1, batch_size: 32, optimizer: adamw(3e-3), ..Default::default() };

    let mut group = c.benchmark_group("train_epoch");
    group.sample_size(10);
    group.throughput(Throughput::Elements(mnist.len() as u64));
    let mut trained = Vec::new();
    for (name, s) in [("mnist_gap_teacher_512_bs32", &teacher), ("mnist_ds_student_512_bs32", &student)] {
        group.bench_function(name, |b| b.iter(|| train(s, &mnist, &cfg, Init::Random, &mut NoHooks).expect("train")));
        trained.push(train(s, &mnist, &cfg, Init::Random, &mut NoHooks).expect("train").params);
    }
    group.finish();

    let mut group = c.benchmark_group("mnist_distill_pair_forward");
    for ((name, s), params) in [("teacher", &teacher), ("student", &student)].into_iter().zip(&trained) {
        let net = Network::from_tensors(s, params).expect("builds");
        for batch in [1usize, 64] {
            let x = mnist.x.narrow(0, 0, batch).expect("batch");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(name, batch), &x, |b, x| {
                b.iter(|| net.forward(x).expect("forward"))
            });
        }
    }
    group.finish();
}

/// One full run of the MNIST CNN recipe used in the (ignored) unit test, timed once.
fn mnist_full_run(_c: &mut Criterion) {
    if std::env::var_os("NN_BENCH_SKIP_FULL").is_some() {
        return;
    }
    let ds = dataset("mnist5k");
    let (train_split, test): (Split, Split) = (ds.train.expect("train"), ds.test.expect("test"));
    let cnn = spec("mnist-cnn");
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 64,
        seed: 1,
        optimizer: OptimizerConfig::AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 },
        schedule: LrSchedule::Cosine { warmup_epochs: 0, min_lr: 1e-4 },
        ..Default::default()
    };
    let t0 = Instant::now();
    let out = train(&cnn, &train_split, &cfg, Init::Random, &mut NoHooks).expect("train");
    let secs = t0.elapsed().as_secs_f64();
    let net = Network::from_tensors(&cnn, &out.params).expect("cnn builds");
    let report = evaluate(&net, &test.x, test.y.as_ref().expect("labels"), 250).expect("eval");
    println!(
        "mnist_cnn_full_run: 4 epochs x 4000 samples in {secs:.1} s ({:.0} samples/s), test accuracy {:.2} %, inference {:.0} samples/s",
        4.0 * 4000.0 / secs,
        report.accuracy * 100.0,
        report.samples_per_sec
    );
}

criterion_group!(benches, teacher_forward, train_one_epoch, distill_pair, mnist_full_run);
criterion_main!(benches);
