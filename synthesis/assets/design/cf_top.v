// chipforge synthesis asset: top level joining the counter and the ALU behind a register.
module cf_top (
    input  wire       clk,
    input  wire       rst_n,
    input  wire       en,
    input  wire [7:0] b,
    input  wire [2:0] op,
    output reg  [7:0] result,
    output wire       zero,
    output wire       wrap
);
    wire [7:0] count;
    wire [7:0] y;

    cf_counter #(.WIDTH(8)) u_counter (
        .clk(clk), .rst_n(rst_n), .en(en), .up(1'b1), .load(1'b0),
        .load_value(8'd0), .count(count), .wrap(wrap)
    );

    cf_alu #(.WIDTH(8)) u_alu (.a(count), .b(b), .op(op), .y(y), .zero(zero));

    always @(posedge clk or negedge rst_n) begin
        if (!rst_n)
            result <= 8'd0;
        else
            result <= y;
    end
endmodule
