# A macOS VM as a service: its SSH and a web server on the ports Nomad allocates,
# forwarded (TCP and UDP) from the node's address into the VM as Docker publishes ports.
#
#   nomad job run examples/service-ports.nomad.hcl
#   ssh -p <NOMAD_HOST_PORT_ssh> admin@<node>          (from any machine that reaches the node)
#   curl http://<node>:<NOMAD_HOST_PORT_http>/
#
# The web server is whatever the image runs on port 8080 (listening on 0.0.0.0, not
# 127.0.0.1). The service and its check use the node's address and the host port (the
# default address mode), which the forward serves, so Consul's check reaches the guest.
job "tart-service" {
  datacenters = ["dc1"]

  group "vm" {
    network {
      port "ssh" {
        to = 22
      }
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "macos-web"
      port     = "http"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "vm" {
      driver = "tart"

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "admin"
        ports        = ["ssh", "http"]
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
