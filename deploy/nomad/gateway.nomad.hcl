# The gateway service of AIOS. Rolling upgrades: one allocation at a time, only once the new one is healthy
# (/healthz on AIOS_HTTP_PORT), rolled back by itself if it never is.
job "aios-gateway" {
  type        = "service"
  datacenters = ["dc1"]

  update {
    max_parallel     = 1
    min_healthy_time = "15s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "gateway" {
    count = 2

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "health" { to = 9100 }
      port "http" { static = 8080 }
    }

    service {
      name = "aios-gateway"
      port = "health"
      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "gateway" {
      driver = "docker"
      config {
        image = "aios:latest"
        args  = ["service", "gateway"]
        ports = ["health", "http"]
      }
      env {
        AIOS_STREAM_REPLICAS = "3"
        AIOS_HTTP_PORT       = "9100"
        AIOS_GATEWAY_HOST = "0.0.0.0"
        AIOS_GATEWAY_PORT = "8080"
      }
      template {  # this task's NATS identity (docs/security.md); the password is a Nomad Variable
        data        = "AIOS_NATS_URL=nats://gateway:{{ with nomadVar \"nomad/jobs/aios-gateway\" }}{{ .nats_password_gateway }}{{ end }}@nats.service.consul:4222"
        destination = "secrets/nats.env"
        env         = true
      }
      template {  # the API's tokens (token=tenant,...), the same for every allocation: without them each made its own
        data        = "AIOS_GATEWAY_TOKENS={{ with nomadVar \"nomad/jobs/aios-gateway\" }}{{ .gateway_tokens }}{{ end }}"
        destination = "secrets/gateway.env"
        env         = true
      }
      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
