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

/// `openapi/encoder.json` is generated from the code and documents exactly the routes the
/// router serves; run with `UPDATE_OPENAPI=1` to refresh it.
#[tokio::test]
async fn committed_openapi_matches_the_code() {
    let paths = ["/{endpoint}", "/encode", "/livez", "/readyz", "/metrics"];
    let app = app(&Config::parse_from(["flowmesh-encoder"])).unwrap();
    flowmesh_shared::testing::assert_openapi("encoder", &flowmesh_encoder::openapi(), &paths, &app)
        .await;
}

/// Swagger UI is served at `/docs`, and the document's example body is embedded as it is.
#[tokio::test]
async fn swagger_ui_and_its_example_body_work() {
    use flowmesh_shared::testing::{assert_swagger_ui, served_example};

    let app = app(&Config::parse_from(["flowmesh-encoder", "--dim", "8"])).unwrap();
    assert_swagger_ui(&app).await;
    let example = served_example(&app, "/{endpoint}").await;
    for endpoint in ["index", "search", "update"] {
        let (status, out) = post(&app, endpoint, &example).await;
        assert_eq!(status.as_u16(), 200, "{endpoint}: {out}");
        assert_eq!(
            out["data"][0]["embedding"].as_array().map(Vec::len),
            Some(8),
            "{out}"
        );
    }
}
