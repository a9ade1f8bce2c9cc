//! The binary as a user installs it: `omnibind serve` with no configuration and no arguments
//! but a port and a data directory, started from a directory that holds nothing of the
//! repository, serves the bundled model embedded in it; `--version` says what was built; a
//! model that cannot be found is named plainly, without a backtrace.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{multipart, Client};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::default_model::{sample_dir, sample_items};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary, run in `cwd` with an environment that points nowhere near the repository: no
/// `OMNIBIND__*` variables, and a home and Hugging Face cache inside `cwd`.
fn omnibind(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_omnibind"));
    cmd.current_dir(cwd)
        .env("HOME", cwd.join("home"))
        .env("HF_HUB_CACHE", cwd.join("hf-cache"))
        .env_remove("HF_HOME")
        .env_remove("RUST_BACKTRACE");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OMNIBIND") {
            cmd.env_remove(k);
        }
    }
    cmd
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_with_no_configuration_from_any_directory_finds_images_from_text() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Server(
        omnibind(cwd.path())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", "data"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let t = Instant::now();
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "the server exited before it was ready"
        );
        assert!(t.elapsed() < Duration::from_secs(90), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The data directory is relative to where the server started.
    assert!(cwd.path().join("data").is_dir());

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let model = &models["models"][0];
    assert_eq!(model["name"], "default", "{models}");
    assert_eq!(model["family"], "imagebind", "{models}");
    // The embedded weights are the committed ones.
    let committed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/model.safetensors"),
    )
    .unwrap();
    assert_eq!(
        model["weights_sha256"],
        format!("{:x}", Sha256::digest(&committed)),
        "{models}"
    );

    let r = client
        .post(format!("{base}/v1/collections"))
        .json(&json!({"name": "emoji", "model": "default"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut form = multipart::Form::new();
    for (hex, v) in sample_items() {
        let png = std::fs::read(sample_dir().join(v["image"].as_str().unwrap())).unwrap();
        form = form
            .part(
                "file",
                multipart::Part::bytes(png)
                    .file_name("emoji.png")
                    .mime_str("image/png")
                    .unwrap(),
            )
            .text("id", hex);
    }
    let r = client
        .post(format!("{base}/v1/collections/emoji/items"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let found: Value = client
        .post(format!("{base}/v1/collections/emoji/search"))
        .json(&json!({"query": "a picture of a person surfing", "k": 3}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(found["hits"][0]["id"], "1F3C4", "{found}");
    drop(server);
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    omnibind(cwd).args(args).output().unwrap()
}

#[test]
fn version_names_the_commit_and_the_features() {
    let cwd = tempfile::tempdir().unwrap();
    let out = run(cwd.path(), &["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("omnibind {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("features: builtin-model"), "{text}");
}

/// Runs `serve --model REF`, which must fail at start-up, and returns its standard error.
fn serve_fails(cwd: &Path, model: &str) -> String {
    let port = free_port().to_string();
    let out = run(
        cwd,
        &[
            "serve",
            "--model",
            model,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            "data",
        ],
    );
    assert!(!out.status.success(), "serve --model {model} started");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !err.contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );
    err
}

#[test]
fn a_missing_model_is_named_as_a_directory_or_as_a_hub_id() {
    let cwd = tempfile::tempdir().unwrap();
    let root = cwd.path().canonicalize().unwrap();
    // Explicitly local: only the directory is named.
    let err = serve_fails(&root, "./models/mine");
    assert!(
        err.contains(&format!(
            "model directory {} does not exist",
            root.join("models/mine").display()
        )),
        "{err}"
    );
    assert!(!err.contains("Hugging Face"), "{err}");
    // Hub-shaped with no such directory: both places, and how to allow downloads.
    let err = serve_fails(&root, "acme/missing-model");
    assert!(
        err.contains(&format!(
            "there is no directory {}",
            root.join("acme/missing-model").display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&root.join("hf-cache").display().to_string()),
        "{err}"
    );
    assert!(err.contains("--allow-download"), "{err}");
    // Neither shape.
    let err = serve_fails(&root, "no-such-model");
    assert!(err.contains("neither a model directory"), "{err}");
}

/// Starts `serve --model REF` in `root` and returns its `/v1/models` answer.
fn models_served(root: &Path, model: &str) -> Value {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        omnibind(root)
            .args(["serve", "--model", model])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                "data",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = Client::new();
    let t = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/v1/models")).send() {
            if r.status().is_success() {
                return r.json().unwrap();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(90), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The models' names and modalities, as `/v1/models` lists them.
fn names_and_modalities(models: &Value) -> Vec<(String, Vec<String>)> {
    models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let modalities = m["modalities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            (m["name"].as_str().unwrap().to_string(), modalities)
        })
        .collect()
}

fn tiny_imagebind() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagebind/models/imagebind-tiny")
}

#[test]
fn serve_model_takes_a_directory_without_a_configuration_file() {
    // `--model DIR` serves that directory under its own name, relative to the current one.
    let cwd = tempfile::tempdir().unwrap();
    let root = cwd.path();
    std::os::unix::fs::symlink(tiny_imagebind(), root.join("tiny")).unwrap();
    let served = names_and_modalities(&models_served(root, "tiny"));
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served[0].0, "tiny");
}

/// README's ImageBind directories load in `embed` and in `serve`: one holding the official
/// `.pth` beside `config.json` and `tokenizer.json` (no safetensors), and a converted one
/// without a text tower and without a tokenizer.
#[test]
fn imagebind_directories_load_as_the_readme_says() {
    let cwd = tempfile::tempdir().unwrap();
    let root = cwd.path();
    let tiny = tiny_imagebind();
    let pth = root.join("official");
    std::fs::create_dir(&pth).unwrap();
    for f in ["config.json", "tokenizer.json", "imagebind_tiny.pth"] {
        std::fs::copy(tiny.join(f), pth.join(f)).unwrap();
    }
    let no_text = root.join("no-text");
    let out = run(
        root,
        &[
            "convert-imagebind",
            tiny.join("imagebind_tiny.pth").to_str().unwrap(),
            no_text.to_str().unwrap(),
            "--modalities",
            "image,audio",
            "--config",
            tiny.join("config.json").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!no_text.join("tokenizer.json").exists());
    let (_, first) = &sample_items()[0];
    let png = sample_dir().join(first["image"].as_str().unwrap());
    let png = png.to_str().unwrap();
    let (pth, no_text) = (pth.to_str().unwrap(), no_text.to_str().unwrap());
    for args in [
        ["--model", pth, "--text", "a dog"],
        ["--model", pth, "--image", png],
        ["--model", no_text, "--image", png],
    ] {
        let out = run(root, &[&["embed"][..], &args[..]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains('['),
            "embed {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Text on the model without a text tower is refused, naming what is missing.
    let out = run(root, &["embed", "--model", no_text, "--text", "a dog"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("text"), "{err}");
    // Both serve.
    let served = names_and_modalities(&models_served(root, pth));
    assert_eq!(served[0].0, "official");
    assert!(served[0].1.contains(&"text".to_string()), "{served:?}");
    let served = names_and_modalities(&models_served(root, no_text));
    assert_eq!(served[0].0, "no-text");
    assert!(!served[0].1.contains(&"text".to_string()), "{served:?}");
    assert!(served[0].1.contains(&"image".to_string()), "{served:?}");
}
