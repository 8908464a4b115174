# What runs on every GPU client node: its device agent (NVML, runs the workers) and its trainer (launches the
# node's share of each placed job). A system job: one allocation per eligible node, new nodes get theirs at join.
# The agent's task holds its workers (they are its child processes, in its container): its memory is theirs too.
# Nodes with fewer GPUs: run a copy of this job under another name with `-var gpus_per_node=N` and a constraint on
# their node class (a system job places only where its device request fits). CPU-only nodes: a copy without the
# `device` block and the `nvidia` runtime (the agent then registers the node with no accelerators).
variable "gpus_per_node" {
  type    = number
  default = 8
}

variable "workers_memory_mb" {
  type    = number
  default = 65536
}

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
        # the host's network and IPC: a gang's rank 0 listens on MASTER_PORT of this node (named by its node id),
        # a serving replica announces the host's name to the router, and NCCL and data loaders share memory. On
        # a Docker bridge none of them could be reached from another host, and /dev/shm was 64 MB
        network_mode = "host"
        ipc_mode     = "host"
      }
      # the NVIDIA device plugin hands the GPUs to the agent, which pins each worker to its own by UUID
      template {  # this task's NATS identity (docs/security.md); the password is a Nomad Variable
        data        = "AIOS_NATS_URL=nats://node:{{ with nomadVar \"nomad/jobs/aios-node\" }}{{ .nats_password_node }}{{ end }}@nats.service.consul:4222"
        destination = "secrets/nats.env"
        env         = true
      }
      resources {
        cpu    = 2000
        memory = var.workers_memory_mb  # the agent's and every worker's it starts: 2 GiB was one job's, at most
        device "nvidia/gpu" {
          count = var.gpus_per_node
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
