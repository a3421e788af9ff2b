"""The Kubernetes checks of scripts/k8s_check.py as tests, and proof that they catch what
they are meant to catch.

Needs the venv of scripts/setup-k8s-tools.sh (`make k8s-check`); under any other Python
the module skips itself.
"""

import copy
import sys
import unittest
from pathlib import Path

try:
    import helm_python  # noqa: F401
    import kubernetes_validate  # noqa: F401
    import yaml  # noqa: F401
except ImportError as e:
    raise unittest.SkipTest(
        f"Kubernetes tools not installed ({e.name}): run `make k8s-check`, which uses "
        ".cache/k8s-venv from scripts/setup-k8s-tools.sh"
    )

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k8s_check as k  # noqa: E402


def worker_deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment" and k.component(d) == "worker")


class Chart(unittest.TestCase):
    def test_ci_values_cover_every_mode(self):
        names = {f.name for f in k.CI_VALUES}
        for want in ("rabbitmq-values.yaml", "sqs-values.yaml", "keda-off-values.yaml",
                     "cpu-only-values.yaml"):
            self.assertIn(want, names)

    def test_lints_strictly(self):
        for f in [None, *k.CI_VALUES]:
            with self.subTest(values=f.name if f else "default"):
                self.assertEqual(k.lint_problems(f), [])

    def test_renders_valid_manifests_for_every_ci_values(self):
        for f in k.CI_VALUES:
            with self.subTest(values=f.name):
                self.assertEqual(k.chart_case_problems(f), [])

    def test_keda_off_renders_no_scaled_object(self):
        _, docs = k.render_chart(k.CHART / "ci" / "keda-off-values.yaml")
        kinds = {d["kind"] for d in docs}
        self.assertNotIn("ScaledObject", kinds)
        self.assertNotIn("TriggerAuthentication", kinds)
        self.assertEqual(worker_deployment(docs)["spec"]["replicas"], 3)

    def test_cpu_only_requests_no_gpu(self):
        _, docs = k.render_chart(k.CHART / "ci" / "cpu-only-values.yaml")
        self.assertNotIn(k.GPU_RESOURCE, yaml.safe_dump_all(docs))

    def test_queue_kind_chooses_trigger(self):
        for name, trigger in (("rabbitmq", "rabbitmq"), ("sqs", "aws-sqs-queue")):
            _, docs = k.render_chart(k.CHART / "ci" / f"{name}-values.yaml")
            (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
            self.assertEqual([t["type"] for t in so["spec"]["triggers"]], [trigger])

    def test_allowed_url_ranges_reach_both_processes(self):
        _, docs = k.render_chart(k.CHART / "ci" / "rabbitmq-values.yaml")
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        self.assertEqual(config["data"]["TAGFLEET_ALLOW_URL_RANGES"], "10.20.0.0/16,fd00:20::/64")
        _, docs = k.render_chart(k.CHART / "ci" / "sqs-values.yaml")
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        self.assertNotIn("TAGFLEET_ALLOW_URL_RANGES", config["data"])

    def test_scheduler_tls_secret_is_mounted_and_named_when_set(self):
        def scheduler_objects(values):
            _, docs = k.render_chart(k.CHART / "ci" / values)
            of = lambda kind: next(d for d in docs if d["kind"] == kind and k.component(d) == "scheduler")
            return of("Deployment"), of("Service"), of("NetworkPolicy"), docs

        deployment, service, policy, docs = scheduler_objects("rabbitmq-values.yaml")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = k.env_of(container)
        self.assertEqual(env["TAGFLEET_TLS_CERT"], "/etc/tagfleet/tls/tls.crt")
        self.assertEqual(env["TAGFLEET_TLS_KEY"], "/etc/tagfleet/tls/tls.key")
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        self.assertEqual(volume["secret"]["secretName"], "tagfleet-scheduler-tls")
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
        self.assertEqual((mount["mountPath"], mount["readOnly"]), ("/etc/tagfleet/tls", True))
        self.assertIn("https", [p["name"] for p in container["ports"]])
        self.assertEqual(service["spec"]["ports"][0]["targetPort"], "https")
        self.assertEqual(policy["spec"]["ingress"][0]["ports"][0]["port"], "https")
        (test,) = [d for d in docs if d["kind"] == "Pod"]
        args = test["spec"]["containers"][0]["args"]
        self.assertTrue(args[-1].startswith("https://"), args)
        self.assertIn("--cacert", args)
        self.assertNotIn("--insecure", args)

        deployment, service, policy, _ = scheduler_objects("sqs-values.yaml")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.assertNotIn("TAGFLEET_TLS_CERT", k.env_of(container))
        self.assertEqual(service["spec"]["ports"][0]["targetPort"], "http")
        self.assertEqual(policy["spec"]["ingress"][0]["ports"][0]["port"], "http")

    def test_operator_categorizers_reach_workers_and_scheduler(self):
        _, docs = k.render_chart(k.CHART / "ci" / "cpu-only-values.yaml")
        configs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        files = configs["tagfleet-categorizers"]["data"]
        self.assertEqual(list(files), ["pets.toml"])
        self.assertIn('"cats" = ["cat.n.01"]', files["pets.toml"])
        self.assertEqual(configs["tagfleet"]["data"]["TAGFLEET_CATEGORIZERS_DIR"], "/etc/tagfleet/categorizers")
        for d in docs:
            if d["kind"] != "Deployment":
                continue
            pod = d["spec"]["template"]["spec"]
            (volume,) = [v for v in pod["volumes"] if v["name"] == "categorizers"]
            self.assertEqual(volume["configMap"]["name"], "tagfleet-categorizers")
            (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "categorizers"]
            self.assertEqual((mount["mountPath"], mount["readOnly"]), ("/etc/tagfleet/categorizers", True))
            self.assertIn("checksum/categorizers", d["spec"]["template"]["metadata"]["annotations"])

        # None asked for: no folder, no volume, the built-in categorizers only.
        _, docs = k.render_chart(k.CHART / "ci" / "rabbitmq-values.yaml")
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        self.assertNotIn("TAGFLEET_CATEGORIZERS_DIR", config["data"])
        for d in docs:
            if d["kind"] == "Deployment":
                volumes = d["spec"]["template"]["spec"]["volumes"]
                self.assertNotIn("categorizers", [v["name"] for v in volumes])

    def test_config_checksum_on_pod_templates(self):
        _, docs = k.render_chart(k.CHART / "ci" / "rabbitmq-values.yaml")
        for d in docs:
            if d["kind"] == "Deployment":
                self.assertIn("checksum/config", d["spec"]["template"]["metadata"]["annotations"])

    def test_long_names_stay_within_63_characters(self):
        with helm_python.Chart.load(k.CHART) as chart:
            rendered = chart.render({"fullnameOverride": "a" * 70}, name="x")
        docs = [d for p, t in rendered.items() if p.endswith(".yaml") for d in k.load_docs(t)]
        names = [d["metadata"]["name"] for d in docs]
        self.assertTrue(all(len(n) <= 63 and not n.endswith("-") for n in names), names)
        deployments = {k.component(d): d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
        self.assertTrue(deployments["scheduler"].endswith("-scheduler"))
        self.assertTrue(deployments["worker"].endswith("-worker"))

    def test_alert_rules_match_kustomize_base(self):
        self.assertEqual(k.rule_parity_problems(), [])


class Routing(unittest.TestCase):
    # The names core/contracts/src/routing.rs's tests expect: one rule, three places.
    SHARED = [
        ("efficientnet-lite0@1", "tagfleet-tasks-efficientnet-lite0_1"),
        ("resnet50@2.1", "tagfleet-tasks-resnet50_2_1"),
        ("Clip-ViT@v2", "tagfleet-tasks-Clip-ViT_v2"),
        ("vit_base@1", "tagfleet-tasks-vit-base-1__9ffd6bcda7cb"),
        ("resnet50@2.1-rc1", "tagfleet-tasks-resnet50-2-1-rc1__40553bbc2cb0"),
        ("a-model-name-that-goes-on-and-on-and-on-well-past-eighty@2024.1",
         "tagfleet-tasks-a-model-name-that-goes-on-and-on-and-on-well-pa__2980e786635f"),
    ]

    @staticmethod
    def render(values):
        with helm_python.Chart.load(k.CHART) as chart:
            chart.validate_schema(values)
            rendered = chart.render(values, name=k.RELEASE, namespace=k.NAMESPACE)
        return [d for p, t in sorted(rendered.items()) if p.endswith(".yaml") for d in k.load_docs(t)]

    def test_names_match_the_contracts_rule(self):
        for model, want in self.SHARED:
            self.assertEqual(k.task_queue("tagfleet-tasks", model), want)

    def test_the_charts_trigger_reads_the_models_queue(self):
        sqs = {"kind": "sqs", "name": "tagfleet-tasks",
               "sqs": {"queueURL": "https://sqs.eu-west-1.amazonaws.com/111122223333/tagfleet-tasks"}}
        for model, want in self.SHARED:
            with self.subTest(model=model):
                for queue in ({"kind": "rabbitmq", "name": "tagfleet-tasks"}, sqs):
                    docs = self.render({"model": {"name": "m", "id": model}, "queue": queue})
                    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
                    md = so["spec"]["triggers"][0]["metadata"]
                    got = md.get("queueName") or md["queueURL"]
                    self.assertEqual(got.rsplit("/", 1)[-1], want)
                    self.assertEqual(k.routing_problems(docs), [])
                    env = k.env_of(worker_deployment(docs)["spec"]["template"]["spec"]["containers"][0])
                    self.assertEqual((env["TAGFLEET_MODEL"], env["TAGFLEET_MODEL_ID"]), ("m", model))

    def test_a_trigger_on_another_queue_or_an_unserved_model_is_caught(self):
        _, docs = k.render_chart(k.CHART / "ci" / "rabbitmq-values.yaml")
        self.assertEqual(k.routing_problems(docs), [])
        shared = copy.deepcopy(docs)
        so = next(d for d in shared if d["kind"] == "ScaledObject")
        so["spec"]["triggers"][0]["metadata"]["queueName"] = "tagfleet-tasks"
        self.assertTrue(any("not tagfleet-tasks-efficientnet-lite0_1" in p for p in k.routing_problems(shared)))
        other = copy.deepcopy(docs)
        container = worker_deployment(other)["spec"]["template"]["spec"]["containers"][0]
        for e in container["env"]:
            if e["name"] == "TAGFLEET_MODEL_ID":
                e["value"] = "resnet50@2"
        problems = k.routing_problems(other)
        self.assertTrue(any("does not serve the workers' model resnet50@2" in p for p in problems), problems)
        self.assertTrue(any("not tagfleet-tasks-resnet50_2" in p for p in problems), problems)

    def test_the_old_queue_is_drained_only_when_asked(self):
        for drain in (False, True):
            docs = self.render({"scheduler": {"drainLegacyQueue": drain}})
            scheduler = next(d for d in docs if d["kind"] == "Deployment" and k.component(d) == "scheduler")
            env = k.env_of(scheduler["spec"]["template"]["spec"]["containers"][0])
            self.assertEqual(env.get("TAGFLEET_DRAIN_LEGACY_QUEUE"), "true" if drain else None)


class Kustomize(unittest.TestCase):
    def setUp(self):
        if k.kubectl() is None:
            self.skipTest("kubectl not found: run scripts/setup-k8s-tools.sh")

    def test_overlays_build_valid_manifests(self):
        self.assertEqual({o.name for o in k.OVERLAYS}, {"rabbitmq", "sqs"})
        for o in k.OVERLAYS:
            with self.subTest(overlay=o.name):
                self.assertEqual(k.overlay_problems(o), [])


class Metrics(unittest.TestCase):
    def test_dashboards_and_alerts_name_only_declared_metrics(self):
        unknown = k.unknown_metrics(k.all_promql(), k.declared_metrics())
        if unknown:
            sources = ", ".join(str(p.relative_to(k.ROOT)) for p in k.METRIC_SOURCES if p.is_file())
            self.fail(f"metrics not declared in {sources}:\n" + "\n".join(unknown))

    def test_dashboards_use_the_datasource_variable(self):
        self.assertTrue(k.DASHBOARDS)
        for p in k.DASHBOARDS:
            with self.subTest(dashboard=p.name):
                self.assertEqual(k.dashboard_problems(p), [])

    def test_metric_check_catches_a_misspelt_metric(self):
        declared = k.declared_metrics([k.ROOT / "worker" / "src" / "metrics.rs"])
        good = 'sum by (outcome) (rate(tagfleet_worker_images_total{outcome!="ok"}[5m]))'
        self.assertEqual(k.unknown_metrics([("panel", good)], declared), [])
        bad = good.replace("images_total", "image_total")
        (line,) = k.unknown_metrics([("panel", bad)], declared)
        self.assertIn("tagfleet_worker_image_total", line)

    def test_histogram_suffixes_and_promql_words_are_not_metrics(self):
        expr = ('histogram_quantile(0.95, sum by (le, stage) (rate('
                'tagfleet_worker_stage_duration_seconds_bucket{stage="decode"}[$__rate_interval])))'
                ' > bool 0.5 unless on (namespace) process_open_fds offset 30m')
        self.assertEqual(k.promql_metric_names(expr),
                         {"tagfleet_worker_stage_duration_seconds_bucket", "process_open_fds"})
        self.assertEqual(k.unknown_metrics([("x", expr)], k.declared_metrics()), [])


class Assertions(unittest.TestCase):
    """The rendered chart passes; a broken copy of it must not."""

    @classmethod
    def setUpClass(cls):
        _, cls.docs = k.render_chart(k.CHART / "ci" / "rabbitmq-values.yaml")

    def test_security_check_catches_a_writable_root_filesystem(self):
        worker = worker_deployment(self.docs)
        self.assertEqual(k.security_context_problems(worker), [])
        broken = copy.deepcopy(worker)
        del broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        problems = k.security_context_problems(broken)
        self.assertEqual(len(problems), 1)
        self.assertIn("readOnlyRootFilesystem", problems[0])

    def test_grace_period_must_exceed_drain_timeout(self):
        docs = copy.deepcopy(self.docs)
        worker_deployment(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 60
        self.assertTrue(any("terminationGracePeriodSeconds" in p
                            for p in k.workload_problems(docs, gpu=True)))

    def test_pixel_budget_must_fit_the_memory_limit(self):
        self.assertEqual(k.bytes_of("16Gi"), 16 * 2**30)
        self.assertEqual(k.bytes_of("512M"), 512 * 10**6)
        docs = copy.deepcopy(self.docs)
        container = worker_deployment(docs)["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(k.env_of(container)["TAGFLEET_PREPROCESS"], "gpu")
        self.assertFalse(any("pixel budget" in p for p in k.workload_problems(docs, gpu=True)))
        container["resources"]["limits"]["memory"] = "3Gi"
        self.assertTrue(any("pixel budget 2048 MiB" in p for p in k.workload_problems(docs, gpu=True)))

    def test_missing_gpu_request_is_caught(self):
        docs = copy.deepcopy(self.docs)
        del worker_deployment(docs)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][k.GPU_RESOURCE]
        self.assertTrue(any(k.GPU_RESOURCE in p for p in k.workload_problems(docs, gpu=True)))

    def test_scheduler_metrics_off_the_api_port_are_checked(self):
        scheduler = next(d for d in self.docs if d["kind"] == "Deployment" and k.component(d) == "scheduler")
        self.assertEqual(k.workload_problems(self.docs, gpu=True), [])
        self.assertEqual(k.service_monitor_problems(self.docs), [])
        container = scheduler["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(k.env_of(container)["TAGFLEET_METRICS_LISTEN"], "0.0.0.0:9091")
        docs = copy.deepcopy(self.docs)
        broken = next(d for d in docs if d["kind"] == "Deployment" and k.component(d) == "scheduler")
        container = broken["spec"]["template"]["spec"]["containers"][0]
        container["livenessProbe"]["httpGet"]["port"] = "http"
        container["env"] = [e for e in container["env"] if e["name"] != "TAGFLEET_METRICS_LISTEN"]
        problems = k.workload_problems(docs, gpu=True)
        self.assertTrue(any("livenessProbe on port http" in p for p in problems), problems)
        self.assertTrue(any("TAGFLEET_METRICS_LISTEN" in p for p in problems), problems)
        monitor = next(d for d in docs if d["kind"] == "ServiceMonitor" and k.component(d) == "scheduler")
        monitor["spec"]["endpoints"][0]["port"] = "http"
        self.assertTrue(any("scrapes port http" in p for p in k.service_monitor_problems(docs)))

    def test_trigger_of_the_wrong_queue_is_caught(self):
        self.assertEqual(k.keda_problems(self.docs, "rabbitmq", keda=True), [])
        self.assertTrue(k.keda_problems(self.docs, "sqs", keda=True))

    def test_custom_resource_without_required_fields_is_caught(self):
        so = copy.deepcopy(next(d for d in self.docs if d["kind"] == "ScaledObject"))
        del so["spec"]["scaleTargetRef"]["name"]
        so["spec"]["triggers"][0]["metadata"]["value"] = 8
        problems = k.custom_resource_problems(so)
        self.assertTrue(any("scaleTargetRef" in p for p in problems))
        self.assertTrue(any("not a string" in p for p in problems))

    def test_schema_validation_rejects_unknown_fields(self):
        worker = copy.deepcopy(worker_deployment(self.docs))
        worker["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        self.assertTrue(k.schema_problems([worker], "test"))


if __name__ == "__main__":
    unittest.main()
