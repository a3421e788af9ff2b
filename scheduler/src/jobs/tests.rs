//! The job book on a folder store and an in-process queue.

use std::sync::Arc;
use std::time::Duration;

use tagfleet_contracts::keys::Key;
use tagfleet_contracts::schema::{ProgressMessage, SCHEMA_VERSION};
use tagfleet_contracts::secrets::{NewTenant, new_tenant};
use tagfleet_contracts::{ErrorKind, ImageError, Pseudonymiser, ResultLine, Secrets, TaskMessage};
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_io::queue::{MemoryQueue, TaskQueues};
use tagfleet_io::store::FsStore;
use tagfleet_io::{ObjectStore, Queue, StoreError};

use super::{BookConfig, JobBook};
use crate::error::ApiError;
use crate::sources::SourceReader;
use crate::spec::JobSpec;

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    queue: Arc<MemoryQueue>,
    book: JobBook,
    tenant: NewTenant,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path(), None).unwrap());
    let queue = Arc::new(MemoryQueue::new(3));
    let tenant = new_tenant("acme").unwrap();
    let book = book_on(
        store.clone(),
        TaskQueues::shared(["m@1"], queue.clone()),
        &tenant,
    );
    Setup {
        _dir: dir,
        store,
        queue,
        book,
        tenant,
    }
}

/// A book on `store` serving the models of `queues`, the first the default.
fn book_on(store: Arc<dyn ObjectStore>, queues: TaskQueues, tenant: &NewTenant) -> JobBook {
    let models = queues.iter().map(|(m, _)| m.to_owned()).collect();
    JobBook::new(
        store,
        queues,
        Secrets::parse(&tenant.stanza).unwrap(),
        SourceReader {
            s3: None,
            urls: UrlPolicy::default(),
            max_refs: 100,
            max_manifest_bytes: 1 << 20,
            fleet_store: None,
        },
        BookConfig {
            models,
            chunk_size: 2,
            retention: Duration::from_secs(3600),
        },
    )
}

/// The refs of the task messages waiting in the queue (and acks them).
async fn published(queue: &MemoryQueue) -> Vec<Vec<String>> {
    let mut tasks = Vec::new();
    for delivery in queue.receive(100, Duration::from_millis(10)).await.unwrap() {
        let task = TaskMessage::from_json(&delivery.body).unwrap();
        tasks.push(task.items.into_iter().map(|i| i.reference).collect());
        queue.ack(&delivery).await.unwrap();
    }
    tasks
}

#[tokio::test]
async fn an_inline_source_is_kept_apart_read_back_for_a_retry_and_deleted_with_the_job() {
    let Setup {
        store,
        queue,
        book,
        tenant,
        ..
    } = setup();
    let refs = [
        "https://93.184.216.34/shop/a.jpg",
        "https://93.184.216.34/shop/b.jpg",
        "https://93.184.216.34/shop/c.jpg",
    ];
    let spec: JobSpec = crate::spec::parse(
        serde_json::json!({"source": {"kind": "manifest", "inline": refs.join("\n")}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let id = book.create("acme", spec, None).await.unwrap().id;
    assert_eq!(published(&queue).await.concat(), refs);

    // Neither the record in memory nor the one in the store names a ref; the source
    // object under the job's folder does.
    let in_memory = book.record("acme", &id).await.unwrap();
    assert!(in_memory.source_apart);
    let stored = store.get(&Key::job("acme", &id).to_string()).await.unwrap();
    for record in [in_memory.to_json(), stored] {
        let text = String::from_utf8(record).unwrap();
        assert!(!text.contains("93.184.216.34"), "{text}");
    }
    let source_key = Key::job_source("acme", &id).to_string();
    let source = String::from_utf8(store.get(&source_key).await.unwrap()).unwrap();
    assert!(source.contains(refs[1]), "{source}");

    // b.jpg fails; a retry reads the source back and re-publishes it alone.
    let pseudonyms = Pseudonymiser::new(tenant.key.clone());
    let failed = ResultLine::failed(
        pseudonyms.pseudonym(refs[1]),
        tenant.key.id().to_owned(),
        "m@1".into(),
        ImageError::new(ErrorKind::Fetch, "the server answered 503"),
    );
    let mut body = serde_json::to_vec(&failed).unwrap();
    body.push(b'\n');
    store
        .put(&Key::result("acme", &id, "t000001").to_string(), body)
        .await
        .unwrap();
    let report = |task: &str, ok, failed| ProgressMessage {
        v: SCHEMA_VERSION,
        tenant: "acme".into(),
        job_id: id.clone(),
        task_id: task.into(),
        ok,
        failed,
        given_up: None,
    };
    book.apply_progress(&[report("t000001", 1, 1), report("t000002", 1, 0)])
        .await
        .unwrap();
    let retried = book.retry("acme", &id).await.unwrap();
    assert_eq!(retried.images, 1);
    assert_eq!(published(&queue).await, vec![vec![refs[1].to_owned()]]);

    // Cancelled: the source goes with the results.
    book.cancel("acme", &id).await.unwrap();
    assert!(matches!(
        store.get(&source_key).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn tasks_go_to_their_models_queue_and_a_model_no_longer_served_is_not_retried() {
    let Setup { store, tenant, .. } = setup();
    let (m, n) = (Arc::new(MemoryQueue::new(3)), Arc::new(MemoryQueue::new(3)));
    let queues = TaskQueues::new([
        ("m@1".to_owned(), m.clone() as Arc<dyn Queue>),
        ("n@2".to_owned(), n.clone() as Arc<dyn Queue>),
    ]);
    let book = book_on(store.clone(), queues, &tenant);
    let image = "https://93.184.216.34/shop/a.jpg";
    let spec = |model: Option<&str>| -> JobSpec {
        let mut spec = serde_json::json!({"source": {"kind": "urls", "urls": [image]}});
        if let Some(model) = model {
            spec["model"] = model.into();
        }
        crate::spec::parse(spec.to_string().as_bytes()).unwrap()
    };
    let id = book
        .create("acme", spec(Some("n@2")), None)
        .await
        .unwrap()
        .id;
    assert_eq!(published(&m).await, Vec::<Vec<String>>::new());
    assert_eq!(published(&n).await, vec![vec![image.to_owned()]]);
    book.create("acme", spec(None), None).await.unwrap();
    assert_eq!(published(&m).await, vec![vec![image.to_owned()]]);
    assert_eq!(published(&n).await, Vec::<Vec<String>>::new());

    // The n@2 job fails; a fleet that serves only m@1 now will not re-publish it.
    let report = ProgressMessage {
        v: SCHEMA_VERSION,
        tenant: "acme".into(),
        job_id: id.clone(),
        task_id: "t000001".into(),
        ok: 0,
        failed: 1,
        given_up: None,
    };
    book.apply_progress(&[report]).await.unwrap();
    book.flush().await.unwrap();
    let fewer = book_on(store, TaskQueues::shared(["m@1"], m.clone()), &tenant);
    fewer.load().await.unwrap();
    match fewer.retry("acme", &id).await {
        Err(ApiError::Conflict(why)) => assert!(why.contains("n@2"), "{why}"),
        other => panic!("{:?}", other.map(|r| r.images)),
    }
    assert_eq!(published(&m).await, Vec::<Vec<String>>::new());
}
