//! `create`, `job get | wait | cancel` and `tenant get`.

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};

use crate::{
    api::{Api, answer_failure, success_json},
    exit::{Exit, Failure, Result},
    fields::{self, Defaults},
    lacking,
    output::{Output, job_line},
    wait::{self, Target},
};

fn job_path(id: &str) -> Result<String> {
    Ok(Target::job(id)?.path())
}

/// `create TENANT_URL ... [--wait]`: one create; with `--wait`, its end.
pub async fn create(
    api: &Api,
    tenant_url: &str,
    defaults: &Defaults,
    wait_for: Option<Option<u64>>,
    out: &Output,
) -> Result<Exit> {
    let mut body = Map::new();
    defaults.fill(&mut body);
    let mut problems = lacking::name_options(&body, fields::check(&body, false));
    if let Err(m) = provisioner_shared::domain::TenantUrl::parse(tenant_url) {
        problems.insert(0, crate::exit::Problem::new("TENANT_URL", m));
    }
    if !problems.is_empty() {
        return Err(
            Failure::invalid("the create is not valid; nothing was sent").with_problems(problems),
        );
    }
    let body = Value::Object(body);
    let url = api.url(&format!(
        "/configapi/v2/selfservice/tenant/{}",
        tenant_url.to_ascii_lowercase()
    ));
    let response = api.send(|http| http.post(url.clone()).json(&body)).await?;
    if response.status() != StatusCode::ACCEPTED {
        return Err(answer_failure(response).await);
    }
    let job: Value = success_json(response).await?;
    match wait_for {
        None => {
            let id = wait::answered_id(&job, "jobId")?;
            out.show(&job, |_| id)?;
            Ok(Exit::Ok)
        }
        Some(timeout) => {
            let target = Target::answered(&job, "jobId")?;
            if !out.json {
                crate::output::print_text(job["jobId"].as_str().unwrap_or_default())?;
            }
            wait::wait(api, target, timeout, out).await
        }
    }
}

pub async fn job_get(api: &Api, id: &str, out: &Output) -> Result<Exit> {
    let job: Value = api.get(&job_path(id)?).await?;
    out.show(&job, job_line)?;
    Ok(Exit::Ok)
}

pub async fn job_wait(api: &Api, id: &str, timeout: Option<u64>, out: &Output) -> Result<Exit> {
    wait::wait(api, Target::job(id)?, timeout, out).await
}

pub async fn job_cancel(api: &Api, id: &str, out: &Output) -> Result<Exit> {
    let job: Value = api.call(Method::DELETE, &job_path(id)?, None).await?;
    out.show(&job, job_line)?;
    Ok(Exit::Ok)
}

pub async fn tenant_get(api: &Api, url: &str, out: &Output) -> Result<Exit> {
    let url = provisioner_shared::domain::TenantUrl::parse(url)
        .map_err(|m| Failure::invalid(format!("URL {m}")))?;
    let tenant: Value = api.get(&format!("/configapi/v2/tenant/{url}")).await?;
    out.show(&tenant, |t| {
        format!(
            "{} {} {} sipDomain {} id {} created {}",
            t["url"].as_str().unwrap_or_default(),
            t["status"].as_str().unwrap_or_default(),
            t["name"].as_str().unwrap_or_default(),
            t["sipDomain"].as_str().unwrap_or_default(),
            t["id"].as_str().unwrap_or_default(),
            t["createdAt"].as_str().unwrap_or_default()
        )
    })?;
    Ok(Exit::Ok)
}
