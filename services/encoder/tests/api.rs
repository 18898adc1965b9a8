//! `POST /encode` and the encoder's committed OpenAPI document.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use clap::Parser;
use flowmesh_encoder::{app, Config, HashModel, Model};
use flowmesh_shared::testing::post;
use serde_json::json;

#[tokio::test]
async fn encode_embeds_raw_texts_in_order() {
    for workers in ["0", "2"] {
        let app = app(&Config::parse_from([
            "e",
            "--dim",
            "16",
            "--workers",
            workers,
        ]))
        .unwrap();
        let (status, body) =
            post(&app, "encode", &json!({"texts": ["first text", "second"]})).await;
        assert_eq!(status.as_u16(), 200, "{body}");
        assert_eq!(body["model"], "hash");
        assert_eq!(body["dim"], 16);
        let reference = HashModel::new(16).unwrap();
        for (i, text) in ["first text", "second"].iter().enumerate() {
            let got: Vec<f32> = serde_json::from_value(body["embeddings"][i].clone()).unwrap();
            assert_eq!(
                got,
                reference.embed_texts(&[text]).unwrap()[0],
                "workers {workers}"
            );
        }
        let (status, body) = post(&app, "encode", &json!({"texts": []})).await;
        assert_eq!(status.as_u16(), 400);
        assert_eq!(body["kind"], "bad_request");
        let (status, body) = post(&app, "encode", &json!({"text": "typo"})).await;
        assert_eq!(status.as_u16(), 400, "{body}");
        assert_eq!(body["kind"], "invalid_body");
    }
}

/// `openapi/encoder.json` is generated from the code; run with `UPDATE_OPENAPI=1` to refresh it.
#[test]
fn committed_openapi_matches_the_code() {
    let generated = flowmesh_encoder::openapi_json();
    flowmesh_shared::testing::assert_openapi_committed(
        env!("CARGO_MANIFEST_DIR"),
        "encoder.json",
        &generated,
        "flowmesh-encoder",
    );
    for path in ["/{endpoint}", "/encode", "/livez", "/readyz", "/metrics"] {
        assert!(
            generated.contains(&format!("\"{path}\"")),
            "{path} is documented"
        );
    }
}
