//! The sessiongate configs we ship (example file, Kubernetes ConfigMap) load with the real
//! config loader and pass validation, apart from files that only exist in a cluster.

use sessiongate::config::Config;

fn problems_except_missing_files(c: &Config) -> Vec<String> {
    c.problems()
        .into_iter()
        .filter(|p| !(p.field.starts_with("jwt.") && p.message.contains("not a readable file")))
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn kubernetes_configmap_config_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/base/config.yaml"))
            .unwrap();
    let c = Config::from_yaml(&text).expect("k8s/base/config.yaml loads");
    assert_eq!(problems_except_missing_files(&c), Vec::<String>::new());
    assert_eq!(c.grpc.listen.port(), 9191);
    assert_eq!(c.http.listen.port(), 9192);
}

#[test]
fn example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sessiongate.example.yaml"
    ))
    .unwrap();
    let c = Config::from_yaml(&text).expect("example loads");
    c.validate().expect("example is valid");
}
