//! Shared fixtures: service specs and templates for the kube tests.

use floyd::manifest::{
    BlueGreenParams, GpuRequest, GpuSharing, HealthSpec, InstanceTemplate, PortRef, PortSpec,
    Probe, ProbeAction, Resources, Revision, ServiceName, ServiceSpec, Strategy,
};
use std::collections::BTreeMap;

pub fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).expect("valid service name")
}

pub fn template(image: &str) -> InstanceTemplate {
    InstanceTemplate {
        image: Some(image.to_string()),
        command: Vec::new(),
        env: BTreeMap::from([("LOG_LEVEL".to_string(), "info".to_string())]),
        working_dir: None,
        resources: Resources {
            cpu: Some("100m".into()),
            memory: Some("64Mi".into()),
            gpu: None,
        },
        termination_grace_period_seconds: 30,
        kubernetes: None,
        env_from: Default::default(),
    }
}

pub fn gpu_template(image: &str, product: &str) -> InstanceTemplate {
    let mut t = template(image);
    t.resources.gpu = Some(GpuRequest {
        count: 1,
        product: Some(product.to_string()),
        memory_mib: None,
        sharing: GpuSharing::Exclusive,
        allow_in_place: true,
    });
    t
}

pub fn spec(replicas: u32, template: InstanceTemplate) -> ServiceSpec {
    let mut s = ServiceSpec::with_defaults(replicas, template);
    s.ports = vec![PortSpec {
        name: "http".into(),
        port: 8080,
    }];
    s.health = HealthSpec {
        readiness: Some(Probe {
            action: ProbeAction::Http {
                path: "/healthz".into(),
                port: PortRef::Name("http".into()),
            },
            initial_delay_seconds: 0,
            period_seconds: 2,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }),
        liveness: None,
        startup: None,
    };
    s
}

pub fn blue_green(mut s: ServiceSpec) -> ServiceSpec {
    s.strategy = Strategy::BlueGreen {
        blue_green: BlueGreenParams {
            preview_port: Some(18080),
            auto_promote: true,
            scale_down_delay_seconds: 0,
        },
    };
    s
}

pub fn rev(t: &InstanceTemplate) -> Revision {
    floyd::manifest::revision_of(t)
}
