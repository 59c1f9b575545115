//! Who a verified client certificate names: the user a TLS client logs in as without a
//! password (AMQP's `EXTERNAL` mechanism, RabbitMQ's `ssl_cert_login_from = common_name`).

use x509_parser::prelude::{FromDer, X509Certificate};

/// The first common name (CN) of the certificate's subject, if the DER parses and has one.
#[must_use]
pub fn user_of_certificate(der: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_common_name_is_the_user() {
        let mut params =
            rcgen::CertificateParams::new(vec!["client.example".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "postino tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ann");
        let key = rcgen::KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("certificate");
        assert_eq!(
            user_of_certificate(certificate.der()).as_deref(),
            Some("ann")
        );
        let mut nameless = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        nameless.distinguished_name = rcgen::DistinguishedName::new();
        let nameless = nameless.self_signed(&key).expect("certificate");
        assert_eq!(user_of_certificate(nameless.der()), None);
        assert_eq!(user_of_certificate(b"\x30\x03not a certificate"), None);
    }
}
