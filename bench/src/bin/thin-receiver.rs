//! The thinnest durable receiver, the fair ceiling for ingress (issue "Performance,
//! round 2"; docs/PERFORMANCE.md, "Against the thinnest receiver"): the same crates
//! (actix-web, lapin), one confirm-mode channel shared by every request, the body
//! published as is to `dojo.events` (persistent, mandatory), `{}` answered after the
//! broker's ack, 503 otherwise. No authentication, no validation, no envelope, no
//! logging. `THIN_ADDR` (default 127.0.0.1:8090), `AMQP_URL`. Used by `dojo-bench thin`.

use actix_web::{web, App, HttpResponse, HttpServer};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

async fn accept(body: web::Bytes, channel: web::Data<Channel>) -> HttpResponse {
    let published = channel
        .basic_publish(
            common::topology::EXCHANGE.into(),
            "".into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    match published {
        Ok(confirm) => match confirm.await {
            Ok(Confirmation::Ack(None)) => HttpResponse::Ok()
                .content_type("application/json")
                .body("{}"),
            _ => HttpResponse::ServiceUnavailable().finish(),
        },
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("THIN_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".into());
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connection = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    common::topology::declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let channel = web::Data::new(channel);
    HttpServer::new(move || {
        App::new()
            .app_data(channel.clone())
            .route("/v1/events", web::post().to(accept))
            .route("/v1/webhooks/dojo", web::post().to(accept))
            .route("/readyz", web::get().to(HttpResponse::Ok))
    })
    .bind(addr)?
    .run()
    .await?;
    Ok(())
}
