# The scheduler service of AIOS. Rolling upgrades: one allocation at a time, only once the new one is healthy
# (/healthz on AIOS_HTTP_PORT), rolled back by itself if it never is.
job "aios-scheduler" {
  type        = "service"
  datacenters = ["dc1"]

  update {
    max_parallel     = 1
    min_healthy_time = "15s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "scheduler" {
    count = 2

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "health" { to = 9100 }

    }

    service {
      name = "aios-scheduler"
      port = "health"
      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "scheduler" {
      driver = "docker"
      config {
        image = "aios:latest"
        args  = ["service", "scheduler"]
        ports = ["health"]
      }
      env {
        AIOS_STREAM_REPLICAS = "3"
        AIOS_HTTP_PORT       = "9100"
        AIOS_SCHEDULER_POLICY = "fairshare"
        AIOS_SCHEDULER_LEADER = "on"
      }
      template {  # this task's NATS identity (docs/security.md); the password is a Nomad Variable
        data        = "AIOS_NATS_URL=nats://scheduler:{{ with nomadVar \"nomad/jobs/aios-scheduler\" }}{{ .nats_password_scheduler }}{{ end }}@nats.service.consul:4222"
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
