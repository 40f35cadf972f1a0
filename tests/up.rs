//! `connectors up` as the README runs it: the webhook rewrites a pod's image
//! to the proxy, and that rewritten reference pushes and pulls through the
//! proxy against a real registry whose password only the store holds.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::Process;
use testing::{CopyOptions, InspectOptions, OciLayout, Registry, RegistryAccess, RegistryOptions, Skopeo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_rewrites_a_pod_to_the_proxy_and_the_rewritten_image_pulls_through_it() {
    let root = support::root();
    let registry = Registry::start(RegistryOptions::htpasswd("robot$local", "local-registry-secret"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = std::fs::read_to_string(root.join("examples/local/store.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:5000", &registry.url());
    std::fs::write(dir.path().join("store.yaml"), store).unwrap();
    let state = dir.path().join("state");
    let (up, webhook_addr) = Process::start(
        &[
            "up",
            "--store",
            dir.path().join("store.yaml").to_str().unwrap(),
            "--token-auth-file",
            root.join("examples/local/tokens.csv").to_str().unwrap(),
            "--proxy-listen",
            "127.0.0.1:0",
            "--webhook-listen",
            "127.0.0.1:0",
            "--forward-listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        "webhook listening",
    );
    let proxy_addr = up
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "proxy listening")
        .and_then(|l| l["fields"]["addr"].as_str().map(str::to_owned))
        .expect("the proxy address is logged");

    // The webhook, over HTTPS with the generated CA, rewrites the example pod.
    let pod: Value = connector::yaml::parse_documents(
        &std::fs::read_to_string(root.join("examples/local/pod.yaml"))
            .unwrap()
            .replace("127.0.0.1:5000", &registry.host_port()),
    )
    .unwrap()
    .remove(0);
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "up-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": pod,
        }
    });
    let roots = certs::root_store_from_pem(&std::fs::read_to_string(state.join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(certs::client_config(roots, &[b"http/1.1"]).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let answer: Value = client
        .post(format!("https://{webhook_addr}/mutate"))
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut mutated = pod.clone();
    json_patch::patch(&mut mutated, &patch).unwrap();
    let rewritten = mutated["spec"]["containers"][0]["image"].as_str().unwrap().to_owned();
    assert_eq!(
        rewritten,
        format!("{proxy_addr}/namespaces/team-a/connectors/local/demo/app:v1")
    );

    // Push to the rewritten reference and pull it back, as the caller.
    let layout = OciLayout::new(&dir.path().join("layout")).unwrap();
    let image = layout.add_image("v1", &[128 * 1024], 4).unwrap();
    let caller = RegistryAccess::plain_http().creds("ci", "dev-team-a-token");
    let skopeo = Skopeo::new().expect("skopeo is installed (bash .ci/install)");
    skopeo
        .copy(
            &layout.reference("v1"),
            &format!("docker://{rewritten}"),
            &CopyOptions::default().dest(caller.clone()),
        )
        .await
        .unwrap();
    let inspected = skopeo
        .inspect(&format!("docker://{rewritten}"), &InspectOptions::from(caller))
        .await
        .unwrap();
    assert_eq!(inspected["Digest"], image.manifest.digest.as_str());
    assert_eq!(
        registry.manifest_digest("demo/app", "v1").await.unwrap(),
        image.manifest.digest
    );

    // Forward mode, absolute-form through HTTP_PROXY, as the README shows:
    // the registry's own URL, the credential injected by the proxy.
    let forward_addr = up
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "forward proxy listening")
        .and_then(|l| l["fields"]["addr"].as_str().map(str::to_owned))
        .expect("the forward proxy address is logged");
    let curl = |proxy: String| {
        let url = format!("{}/v2/demo/app/tags/list", registry.url());
        async move {
            let output = tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "-w",
                    "\n%{http_code}",
                    "--proxy",
                    &proxy,
                    &url,
                ])
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let listed = curl(format!("http://team-a%2Flocal:dev-team-a-token@{forward_addr}")).await;
    assert!(listed.ends_with("\n200"), "{listed}");
    assert!(listed.contains(r#""tags":["v1"]"#), "{listed}");
    let refused = curl(format!("http://{forward_addr}")).await;
    assert!(refused.ends_with("\n407"), "no proxy credential: {refused}");
    assert!(!up.log_text().contains("local-registry-secret"));
}
