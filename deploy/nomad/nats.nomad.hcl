# NATS with JetStream as its own job: three members on three hosts, rolled one at a time.
job "nats" {
  type        = "service"
  datacenters = ["dc1"]

  update {
    max_parallel     = 1
    min_healthy_time = "30s"
    healthy_deadline = "5m"
    auto_revert      = true
  }

  group "nats" {
    count = 3

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "client" { static = 4222 }
      port "cluster" { static = 6222 }
      port "monitor" { static = 8222 }
    }

    volume "jetstream" {
      type   = "host"
      source = "nats-jetstream"
    }

    service {
      name = "nats"
      port = "client"
      check {
        type     = "http"
        port     = "monitor"
        path     = "/healthz?js-enabled-only=true"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "nats" {
      driver = "docker"
      config {
        image = "nats:2.10-alpine"
        args  = ["-c", "/local/cluster.conf"]
        ports = ["client", "cluster", "monitor"]
      }
      volume_mount {
        volume      = "jetstream"
        destination = "/data"
      }
      env {
        NATS_SERVER_NAME = "nats-${NOMAD_ALLOC_INDEX}"
      }
      template {
        source      = "deploy/nats/cluster.conf"
        destination = "local/cluster.conf"
      }
      template {  # who may publish and subscribe to what: `aios nats-config --tenant ...` (docs/security.md)
        source      = "deploy/nats/auth.conf"
        destination = "local/auth.conf"
      }
      template {  # every identity's password, from the Nomad Variable nomad/jobs/nats
        data        = "{{ with nomadVar \"nomad/jobs/nats\" }}AIOS_NATS_PASS_ADMIN={{ .admin }}\nAIOS_NATS_PASS_SCHEDULER={{ .scheduler }}\nAIOS_NATS_PASS_RESOURCE_MANAGER={{ .resource_manager }}\nAIOS_NATS_PASS_TRAINER={{ .trainer }}\nAIOS_NATS_PASS_MODEL_REGISTRY={{ .model_registry }}\nAIOS_NATS_PASS_GATEWAY={{ .gateway }}\nAIOS_NATS_PASS_NODE={{ .node }}\nAIOS_NATS_PASS_TENANT_TEAM_A={{ .tenant_team_a }}\nAIOS_NATS_PASS_TENANT_TEAM_B={{ .tenant_team_b }}{{ end }}"
        destination = "secrets/passwords.env"
        env         = true
      }
      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }
}
