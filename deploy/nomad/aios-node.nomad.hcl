# What runs on every GPU client node: its device agent (NVML, runs the workers) and its trainer (launches the
# node's share of each placed job). A system job: one allocation per eligible node, new nodes get theirs at join.
job "aios-node" {
  type        = "system"
  datacenters = ["dc1"]

  constraint {
    attribute = "${attr.driver.docker}"
    value     = "true"
  }

  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "node" {
    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    task "device-agent" {
      driver = "docker"
      # on stop it drains its node (up to 5 s: preempted jobs checkpoint), then gives its workers their jobs'
      # stop_grace_s, up to 20 s (AIOS_AGENT_STOP_GRACE_S), all at once
      kill_timeout = "30s"
      config {
        image   = "aios:latest"
        args    = ["agent", "--node", "${node.unique.name}"]
        runtime = "nvidia"
      }
      # the NVIDIA device plugin hands the GPUs to the agent, which pins each worker to its own by UUID
      template {  # this task's NATS identity (docs/security.md); the password is a Nomad Variable
        data        = "AIOS_NATS_URL=nats://node:{{ with nomadVar \"nomad/jobs/aios-node\" }}{{ .nats_password_node }}{{ end }}@nats.service.consul:4222"
        destination = "secrets/nats.env"
        env         = true
      }
      resources {
        cpu    = 2000
        memory = 2048
        device "nvidia/gpu" {
          count = 8
        }
      }
      env {
        AIOS_STREAM_REPLICAS = "3"
        AIOS_NODE_ID         = "${node.unique.name}"
        AIOS_HTTP_PORT       = "9100"
        AIOS_SERVE_HOST      = "0.0.0.0"
      }
    }

    task "trainer" {
      driver = "docker"
      config {
        image = "aios:latest"
        args  = ["service", "trainer"]
      }
      template {  # this task's NATS identity (docs/security.md); the password is a Nomad Variable
        data        = "AIOS_NATS_URL=nats://trainer:{{ with nomadVar \"nomad/jobs/aios-node\" }}{{ .nats_password_trainer }}{{ end }}@nats.service.consul:4222"
        destination = "secrets/nats.env"
        env         = true
      }
      resources {
        cpu    = 500
        memory = 512
      }
      env {
        AIOS_STREAM_REPLICAS = "3"
        AIOS_NODE_ID         = "${node.unique.name}"
        AIOS_HTTP_PORT       = "9101"
      }
    }
  }
}
