# The model-registry service of AIOS. Rolling upgrades: one allocation at a time, only once the new one is healthy
# (/healthz on AIOS_HTTP_PORT), rolled back by itself if it never is.
job "aios-model-registry" {
  type        = "service"
  datacenters = ["dc1"]

  update {
    max_parallel     = 1
    min_healthy_time = "15s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "model-registry" {
    count = 1

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "health" { to = 9100 }
      port "router" { static = 8600 }
    }

    service {
      name = "aios-model-registry"
      port = "health"
      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "model-registry" {
      driver = "docker"
      config {
        image = "aios:latest"
        args  = ["service", "model-registry"]
        ports = ["health", "router"]
      }
      env {
        AIOS_STREAM_REPLICAS = "3"
        AIOS_HTTP_PORT       = "9100"
        AIOS_ROUTER_HOST = "0.0.0.0"
        AIOS_ROUTER_PORT = "8600"
      }
      template {  # this task's NATS identity (docs/security.md); the password is a Nomad Variable
        data        = "AIOS_NATS_URL=nats://model-registry:{{ with nomadVar \"nomad/jobs/aios-model-registry\" }}{{ .nats_password_model_registry }}{{ end }}@nats.service.consul:4222"
        destination = "secrets/nats.env"
        env         = true
      }
      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
