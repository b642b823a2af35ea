//! Batches while their items run: an item gives way to an earlier create of its tenant.

use std::time::Duration;

use provisioner_tests::{
    Options, TestApp,
    batches::{self, item},
    eventually, fixtures,
};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(90);

fn id(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap().to_owned()
}

/// Template downloads wait as long as a test holds them (the tests' usual 5 s would end them).
fn patient_downloads() -> (&'static str, String) {
    ("PROVISIONER_TEMPLATE_TIMEOUT", "60".to_owned())
}

#[tokio::test]
async fn a_batch_item_gives_way_to_an_earlier_single_create_of_its_tenant_and_ends_409() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![patient_downloads()],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let url = fixtures::tenant_url();
    let single = app.submit(&url, &fixtures::create_body(&slow)).await;
    // The single create runs, its download held: it is the tenant's earlier, active create.
    eventually(WITHIN, || async {
        (app.templates.hits("slow.zip") == 1).then_some(())
    })
    .await;
    let other = fixtures::tenant_url();
    let submitted = batches::submit(&app, &[item(&url, &template), item(&other, &template)]).await;
    let batch_id = id(&submitted, "batchId");
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 1, "{done}");
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let results = batches::results(&app, &batch_id, "").await;
    assert_eq!(results[0]["tenantUrl"], url.as_str());
    assert_eq!(results[0]["code"], 409, "{}", results[0]);
    assert_eq!(results[0]["error"]["title"], "Conflict");
    assert_eq!(
        results[0]["error"]["detail"],
        format!("job {single} for tenant {url}, submitted earlier, is still queued or running"),
    );
    assert_eq!(results[1]["code"], 200, "{}", results[1]);

    // The single create, which came first, makes the tenant.
    app.templates.release("slow.zip");
    let job = app.wait_job(&single).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["code"], 200);
    assert_eq!(
        app.count(&format!("SELECT count(*) FROM tenants WHERE url = '{url}'"))
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn of_two_batches_naming_one_tenant_the_earlier_item_wins_and_the_later_ends_409() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![patient_downloads()],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let url = fixtures::tenant_url();
    let first = batches::submit(&app, &[item(&url, &slow)]).await;
    let first_id = id(&first, "batchId");
    eventually(WITHIN, || async {
        (app.templates.hits("slow.zip") == 1).then_some(())
    })
    .await;
    let first_job = batches::results(&app, &first_id, "").await[0]["jobId"].clone();
    let second = batches::submit(&app, &[item(&url, &template)]).await;
    let done = batches::wait(&app, &id(&second, "batchId"), WITHIN).await;
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let later = &batches::results(&app, &id(&second, "batchId"), "").await[0];
    assert_eq!(later["code"], 409, "{later}");
    assert_eq!(
        later["error"]["detail"],
        format!(
            "job {} for tenant {url}, submitted earlier, is still queued or running",
            first_job.as_str().unwrap()
        ),
    );

    app.templates.release("slow.zip");
    let done = batches::wait(&app, &first_id, WITHIN).await;
    assert_eq!(done["counts"]["succeeded"], 1, "{done}");
    let earlier = &batches::results(&app, &first_id, "").await[0];
    assert_eq!(earlier["code"], 200, "{earlier}");
    assert_eq!(earlier["tenant"]["url"], url.as_str());
    app.stop().await;
}
