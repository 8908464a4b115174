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
      check {  # the full check: JetStream has a meta leader and this member's streams are current. A member alone
        # (its routes not yet formed) or still catching up fails it, so the roll waits before stopping the next one
        # (js-enabled-only passed on a member that had never met the others)
        type     = "http"
        port     = "monitor"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    service {  # how members find each other: the routes of the config below are rendered from it
      name = "nats-cluster"
      port = "cluster"
      check {
        type     = "tcp"
        port     = "cluster"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "nats" {
      driver = "docker"
      config {
        image = "nats:2.10-alpine"
        args  = ["-c", "/secrets/nats.conf"]
        ports = ["client", "cluster", "monitor"]
      }
      volume_mount {
        volume      = "jetstream"
        destination = "/data"
      }
      env {
        NATS_SERVER_NAME = "nats-${NOMAD_ALLOC_INDEX}"
      }
      # The member's config, rendered on the client. Routes: itself (JetStream refuses to start a cluster with no
      # route) and every member Consul knows, re-rendered and reloaded (SIGHUP) as members come and go. Addresses
      # are the host's (the task's own address is a Docker bridge's, which the other hosts cannot reach). Routes
      # authenticate: the cluster port is open on every host. deploy/nats/cluster.conf is the same for Compose.
      template {
        data          = <<-EOT
        server_name: $NATS_SERVER_NAME
        port: 4222
        http_port: 8222
        client_advertise: "{{ env "NOMAD_ADDR_client" }}"
        max_payload: 1MB
        jetstream {
          store_dir: "/data/jetstream"
          max_file_store: 50GB
        }
        cluster {
          name: aios
          port: 6222
          advertise: "{{ env "NOMAD_ADDR_cluster" }}"
          authorization {
            user: route
            password: $AIOS_NATS_ROUTE_PASS
          }
          routes: [
            "nats-route://route:{{ with nomadVar "nomad/jobs/nats" }}{{ .route }}{{ end }}@{{ env "NOMAD_ADDR_cluster" }}"
        {{- range service "nats-cluster" }}
            "nats-route://route:{{ with nomadVar "nomad/jobs/nats" }}{{ .route }}{{ end }}@{{ .Address }}:{{ .Port }}"
        {{- end }}
          ]
        }
        include "auth.conf"
        EOT
        destination   = "secrets/nats.conf"
        change_mode   = "signal"
        change_signal = "SIGHUP"
      }
      template {  # who may publish and subscribe to what: `aios nats-config --tenant ...` (docs/security.md); read
        # by `nomad job run` from the directory it runs in (the repository's root)
        data          = file("deploy/nats/auth.conf")
        destination   = "secrets/auth.conf"
        change_mode   = "signal"
        change_signal = "SIGHUP"
      }
      template {  # every identity's password, from the Nomad Variable nomad/jobs/nats
        data        = "{{ with nomadVar \"nomad/jobs/nats\" }}AIOS_NATS_PASS_ADMIN={{ .admin }}\nAIOS_NATS_PASS_SCHEDULER={{ .scheduler }}\nAIOS_NATS_PASS_RESOURCE_MANAGER={{ .resource_manager }}\nAIOS_NATS_PASS_TRAINER={{ .trainer }}\nAIOS_NATS_PASS_MODEL_REGISTRY={{ .model_registry }}\nAIOS_NATS_PASS_GATEWAY={{ .gateway }}\nAIOS_NATS_PASS_NODE={{ .node }}\nAIOS_NATS_PASS_TENANT_TEAM_A={{ .tenant_team_a }}\nAIOS_NATS_PASS_TENANT_TEAM_B={{ .tenant_team_b }}\nAIOS_NATS_ROUTE_PASS={{ .route }}{{ end }}"
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
