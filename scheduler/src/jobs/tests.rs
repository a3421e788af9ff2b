//! The job book on a folder store and an in-process queue.

use std::sync::Arc;
use std::time::Duration;

use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::Key;
use tagfleet_contracts::schema::{GivenUp, ProgressMessage, SCHEMA_VERSION, Status};
use tagfleet_contracts::secrets::{NewTenant, new_tenant};
use tagfleet_contracts::{ErrorKind, ImageError, Pseudonymiser, ResultLine, Secrets, TaskMessage};
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_io::queue::{MemoryQueue, TaskQueues};
use tagfleet_io::store::FsStore;
use tagfleet_io::{ObjectStore, Queue, StoreError};

use super::{BookConfig, JobBook};
use crate::error::ApiError;
use crate::record::JobRecord;
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
    let book = book_on(&store, &queue, &tenant);
    Setup {
        _dir: dir,
        store,
        queue,
        book,
        tenant,
    }
}

/// A job book on `store` and `queue` (a restarted scheduler's, the second time).
fn book_on(store: &Arc<dyn ObjectStore>, queue: &Arc<MemoryQueue>, tenant: &NewTenant) -> JobBook {
    serving(store, TaskQueues::shared(["m@1"], queue.clone()), tenant)
}

/// A job book on `store` serving the models of `queues`, the first the default.
fn serving(store: &Arc<dyn ObjectStore>, queues: TaskQueues, tenant: &NewTenant) -> JobBook {
    let models = queues.iter().map(|(m, _)| m.to_owned()).collect();
    JobBook::new(
        store.clone(),
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
            categorizers: vec!["general".into()],
            chunk_size: 2,
            retention: Duration::from_secs(3600),
        },
    )
}

/// A worker's report on one task of job `id`.
fn report(
    id: &str,
    task: &str,
    ok: u32,
    failed: u32,
    given_up: Option<GivenUp>,
) -> ProgressMessage {
    ProgressMessage {
        v: SCHEMA_VERSION,
        tenant: "acme".into(),
        job_id: id.into(),
        task_id: task.into(),
        ok,
        failed,
        given_up,
    }
}

/// Result lines as a worker writes them, under the tenant's key.
struct Lines {
    pseudonyms: Pseudonymiser,
    key_id: String,
}

impl Lines {
    fn new(tenant: &NewTenant) -> Self {
        Self {
            pseudonyms: Pseudonymiser::new(tenant.key.clone()),
            key_id: tenant.key.id().to_owned(),
        }
    }

    /// Writes the result object of `task`: one line per (ref, ok).
    async fn put(
        &self,
        store: &Arc<dyn ObjectStore>,
        id: &str,
        task: &str,
        images: &[(&str, bool)],
    ) {
        let mut body = Vec::new();
        for (r, ok) in images {
            let mut line = ResultLine::failed(
                self.pseudonyms.pseudonym(r),
                self.key_id.clone(),
                "m@1".into(),
                ImageError::new(ErrorKind::Fetch, "the server answered 503"),
            );
            if *ok {
                line.status = Status::Ok;
                line.error = None;
            }
            body.extend(serde_json::to_vec(&line).unwrap());
            body.push(b'\n');
        }
        store
            .put(&Key::result("acme", id, task).to_string(), body)
            .await
            .unwrap();
    }
}

/// A job of `refs` (URLs of a public address: checked without a network).
async fn create(book: &JobBook, refs: &[&str]) -> String {
    let spec: JobSpec = crate::spec::parse(
        serde_json::json!({"source": {"kind": "urls", "urls": refs}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    book.create("acme", spec, None).await.unwrap().id
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
    let lines = Lines::new(&tenant);
    lines
        .put(&store, &id, "t000001", &[(refs[0], true), (refs[1], false)])
        .await;
    lines.put(&store, &id, "t000002", &[(refs[2], true)]).await;
    book.apply_progress(&[
        report(&id, "t000001", 1, 1, None),
        report(&id, "t000002", 1, 0, None),
    ])
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

const SHOP: [&str; 3] = [
    "https://93.184.216.34/shop/a.jpg",
    "https://93.184.216.34/shop/b.jpg",
    "https://93.184.216.34/shop/c.jpg",
];

#[tokio::test]
async fn a_given_up_task_ends_its_job_and_a_retry_publishes_every_image_without_a_result() {
    let Setup {
        store,
        queue,
        book,
        tenant,
        ..
    } = setup();
    let id = create(&book, &SHOP).await;
    assert_eq!(published(&queue).await.len(), 2, "tasks of two images");

    // a.jpg has a result, b.jpg an error line; the task of c.jpg was given up.
    let lines = Lines::new(&tenant);
    lines
        .put(&store, &id, "t000001", &[(SHOP[0], true), (SHOP[1], false)])
        .await;
    book.apply_progress(&[
        report(&id, "t000001", 1, 1, None),
        report(&id, "t000002", 0, 0, Some(GivenUp::Attempts)),
    ])
    .await
    .unwrap();
    let job = book.get("acme", &id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        (job.counts.done, job.counts.failed, job.counts.unfinished),
        (1, 1, 1)
    );
    assert_eq!(
        job.error.as_deref(),
        Some("1 image never ran: every delivery of their task failed")
    );
    // What the record says is written: a restarted scheduler sees the job ended.
    let stored =
        JobRecord::from_json(&store.get(&Key::job("acme", &id).to_string()).await.unwrap())
            .unwrap();
    assert_eq!(stored.state, JobState::Succeeded);
    assert_eq!(stored.counts.unfinished, 1);

    // A retry publishes the failed image and the one that never ran, not the good one.
    let retried = book.retry("acme", &id).await.unwrap();
    assert_eq!(retried.images, 2);
    assert_eq!(
        published(&queue).await,
        vec![vec![SHOP[1].to_owned(), SHOP[2].to_owned()]]
    );
    assert_eq!(retried.job.state, JobState::Running);
    assert_eq!(
        (retried.job.counts.failed, retried.job.counts.unfinished),
        (0, 0)
    );
    assert_eq!(retried.job.error, None);
    lines
        .put(
            &store,
            &id,
            "r1-t000001",
            &[(SHOP[1], true), (SHOP[2], true)],
        )
        .await;
    book.apply_progress(&[report(&id, "r1-t000001", 2, 0, None)])
        .await
        .unwrap();
    let job = book.get("acme", &id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        (
            job.counts.total,
            job.counts.done,
            job.counts.failed,
            job.counts.unfinished
        ),
        (3, 3, 0, 0)
    );
    assert_eq!(job.error, None);
}

#[tokio::test]
async fn a_job_whose_every_task_was_given_up_fails_and_can_be_retried() {
    let Setup { queue, book, .. } = setup();
    let id = create(&book, &SHOP).await;
    published(&queue).await;
    book.apply_progress(&[
        report(&id, "t000001", 0, 0, Some(GivenUp::OutputRefused)),
        report(&id, "t000002", 0, 0, Some(GivenUp::OutputRefused)),
    ])
    .await
    .unwrap();
    let job = book.get("acme", &id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.counts.unfinished, 3);
    assert_eq!(
        job.error.as_deref(),
        Some("3 images never ran: the job's output location refused the results")
    );
    let retried = book.retry("acme", &id).await.unwrap();
    assert_eq!(retried.images, 3);
    assert_eq!(published(&queue).await.concat(), SHOP);
}

#[tokio::test]
async fn a_restarted_book_counts_the_tasks_whose_results_exist_but_were_never_reported() {
    let Setup {
        _dir,
        store,
        queue,
        book,
        tenant,
    } = setup();
    let id = create(&book, &SHOP).await;
    published(&queue).await;
    // The first task was reported; the second one's report was lost (dead-lettered by
    // an older scheduler whose store was down), but its result object is there.
    let lines = Lines::new(&tenant);
    lines
        .put(&store, &id, "t000001", &[(SHOP[0], true), (SHOP[1], false)])
        .await;
    book.apply_progress(&[report(&id, "t000001", 1, 1, None)])
        .await
        .unwrap();
    lines.put(&store, &id, "t000002", &[(SHOP[2], true)]).await;
    drop(book);

    let restarted = book_on(&store, &queue, &tenant);
    assert_eq!(restarted.load().await.unwrap(), 1);
    assert_eq!(
        restarted.get("acme", &id).await.unwrap().state,
        JobState::Running
    );
    assert_eq!(restarted.reconcile().await.unwrap(), 1);
    let job = restarted.get("acme", &id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!((job.counts.done, job.counts.failed), (2, 1));
    let stored =
        JobRecord::from_json(&store.get(&Key::job("acme", &id).to_string()).await.unwrap())
            .unwrap();
    assert_eq!(stored.state, JobState::Succeeded, "written");
    // Counted once: neither a second pass nor the late report counts it again.
    assert_eq!(restarted.reconcile().await.unwrap(), 0);
    restarted
        .apply_progress(&[report(&id, "t000002", 1, 0, None)])
        .await
        .unwrap();
    assert_eq!(restarted.get("acme", &id).await.unwrap().counts.done, 2);
}

#[tokio::test]
async fn a_task_given_up_whose_result_object_exists_after_all_is_counted_from_it() {
    let Setup {
        store,
        queue,
        book,
        tenant,
        ..
    } = setup();
    let id = create(&book, &SHOP).await;
    published(&queue).await;
    book.apply_progress(&[report(&id, "t000001", 0, 0, Some(GivenUp::Attempts))])
        .await
        .unwrap();
    // An operator moved the dead letter back; it ran, but its report was lost.
    Lines::new(&tenant)
        .put(&store, &id, "t000001", &[(SHOP[0], true), (SHOP[1], true)])
        .await;
    assert_eq!(book.reconcile().await.unwrap(), 1);
    let job = book.get("acme", &id).await.unwrap();
    assert_eq!(
        (job.counts.done, job.counts.unfinished, job.state),
        (2, 0, JobState::Running)
    );
}

#[tokio::test]
async fn tasks_go_to_their_models_queue_and_a_model_no_longer_served_is_not_retried() {
    let Setup { store, tenant, .. } = setup();
    let (m, n) = (Arc::new(MemoryQueue::new(3)), Arc::new(MemoryQueue::new(3)));
    let queues = TaskQueues::new([
        ("m@1".to_owned(), m.clone() as Arc<dyn Queue>),
        ("n@2".to_owned(), n.clone() as Arc<dyn Queue>),
    ]);
    let book = serving(&store, queues, &tenant);
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
    book.apply_progress(&[report(&id, "t000001", 0, 1, None)])
        .await
        .unwrap();
    book.flush().await.unwrap();
    let fewer = serving(&store, TaskQueues::shared(["m@1"], m.clone()), &tenant);
    fewer.load().await.unwrap();
    match fewer.retry("acme", &id).await {
        Err(ApiError::Conflict(why)) => assert!(why.contains("n@2"), "{why}"),
        other => panic!("{:?}", other.map(|r| r.images)),
    }
    assert_eq!(published(&m).await, Vec::<Vec<String>>::new());
}
