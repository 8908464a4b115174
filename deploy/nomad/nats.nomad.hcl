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
      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }
}
